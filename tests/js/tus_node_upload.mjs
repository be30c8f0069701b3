// Upload a file with tus-js-client (Node), as tests/e2e/test_interop_clients.py drives it.
//
//   node tus_node_upload.mjs ENDPOINT FILE URL_STORAGE [--abort-after BYTES]
//
// The client keeps the upload URL in a FileUrlStorage (a JSON file), keyed by the file's
// fingerprint (path, size, mtime, endpoint). A run first looks for a previous upload of the same
// file there (findPreviousUploads) and resumes it (resumeFromPreviousUpload). With --abort-after,
// the run aborts the upload once that many bytes were sent (mid-chunk) and exits 3.
// One JSON object per line on stdout: {"event": "resuming" | "url" | "aborted" | "done", ...}.
// TUS_PROTOCOL picks tus-js-client's protocol: tus-v1 (the default), ietf-draft-03 (interop
// version 5) or ietf-draft-05 (6). TUS_BEARER, when set, goes on every request as
// `Authorization: Bearer <it>` (an upload ticket, say).
// The packages come from the directory NPM_PACKAGES names (scripts/setup --test fills it).
import { createReadStream } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'

const packages = process.env.NPM_PACKAGES
if (!packages) throw new Error('NPM_PACKAGES must name the directory with node_modules')
const require = createRequire(path.join(packages, 'package.json'))
const { Upload, FileUrlStorage } = require('tus-js-client')

const [endpoint, file, storagePath, flag, limit] = process.argv.slice(2)
const abortAfter = flag === '--abort-after' ? Number(limit) : null
let aborting = false
const say = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }))

const upload = new Upload(createReadStream(file), {
  endpoint,
  protocol: process.env.TUS_PROTOCOL || 'tus-v1',
  chunkSize: 5 * 1024 * 1024,
  retryDelays: [0, 250, 500, 1000, 2000],
  urlStorage: new FileUrlStorage(storagePath),
  metadata: { filename: path.basename(file), filetype: 'video/mp4' },
  headers: process.env.TUS_BEARER ? { Authorization: `Bearer ${process.env.TUS_BEARER}` } : {},
  onUploadUrlAvailable() {
    say('url', { url: upload.url })
  },
  onProgress(sent, total) {
    if (abortAfter !== null && sent >= abortAfter && !aborting) {
      aborting = true
      const at = sent
      upload.abort().then(() => {
        say('aborted', { sent: at, total })
        process.exit(3)
      })
    }
  },
  onSuccess() {
    say('done', { url: upload.url })
  },
  onError(error) {
    say('error', { message: String(error) })
    process.exit(1)
  },
})

const previous = await upload.findPreviousUploads()
if (previous.length > 0) {
  say('resuming', { previous: previous.length, url: previous[0].uploadUrl })
  upload.resumeFromPreviousUpload(previous[0])
}
upload.start()
