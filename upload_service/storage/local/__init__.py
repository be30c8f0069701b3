"""Uploads as files on the local disk (``LocalStore``), one file per upload, named by its id.

Each module tells the crash story of its step: ``create`` (a durable empty file, its space
reserved), ``appender`` (bytes count once ``sync`` made them durable; leftovers past the committed
offset are cut), ``writer`` (the writer threads that put bytes into the page cache), ``concat``
(a final upload rebuilt whole from its parts), ``recovery`` (cutting an uncommitted tail, listing
orphans), ``files`` (fsync and the error boundary), ``store`` (the ``Store`` they make up).
"""
