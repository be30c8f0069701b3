"""Uploads as S3 multipart uploads (``S3Store``), in any S3-compatible object store (AWS, MinIO,
Cloudflare R2).

An upload is the multipart upload of object ``<prefix><upload_id>``; the key's ``ref`` is
``<part size>:<UploadId>``. The part size is the upload's own, chosen at ``create`` from its
length (the configured size, raised only as far as 10,000 parts need; for a deferred length, the
size that fits the largest allowed upload), so a short video never gets the parts a 5 TiB upload
needs. Bytes become durable in two ways: every full part of exactly that size is an uploaded part
(all parts but the last have one size, as R2 requires), and the rest, shorter than a part, is an
"incomplete part" object ``<object>.part.<n>`` (as tusd keeps one), where slot ``n`` is the
number the part it starts will have. Every ``sync`` leaves the tail of its slot (empty at a part
boundary; ``create`` writes the first), so the durable size is ``(n - 1) * part_size`` plus tail
``n``, for the highest slot ``n`` whose parts ``1..n-1`` exist. ``finish`` copies the tail in
as the last part (server-side), completes the upload and checks the object's size.

A direct upload (``DirectStore``) is one whose browser sends the bytes straight to the bucket:
ref ``direct:<UploadId>`` for a multipart upload of the same object whose parts it PUTs to
presigned URLs (no checksums, no tails, parts of any size; it completes them with its own part
list), ref ``post:`` for one form POST under a presigned policy (no multipart upload at all).
Either is deleted like any upload and read once finished; neither takes an ``append``.

The crash story (kill -9, or a lost connection, at every step) is told by the module that owns
each step: ``store`` (create, delete), ``appender`` (parts and tails of a request; why a committed
slot's tail always survives), ``recovery`` (cutting an uncommitted tail, listing orphans),
``concat`` (finish and concatenation, run again after a crash), ``direct`` (begin, sign and
finish a direct upload; its orphans), ``bucket`` (what is read back), ``layout`` (S3's limits,
the refs, the durable size), ``workers`` (the threads every call runs in), ``client`` and ``boto``
(the S3 operations, boto3's error boundary and the signer for the public endpoint).
"""
