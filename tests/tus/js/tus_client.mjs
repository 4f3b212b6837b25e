// tus-js-client (npm, pinned by package-lock.json) against the server at argv[2]: each
// scenario of tests/tus/test_tus_js_client.py, its outcome printed as one JSON object.
// Usage: node tus_client.mjs http://127.0.0.1:PORT/api/tus/ <file of PNG bytes> <second file>
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { Upload } from 'tus-js-client'

const [endpoint, firstPath, secondPath] = process.argv.slice(2)
const photo = readFileSync(firstPath)
const other = readFileSync(secondPath)
const TUS = { 'Tus-Resumable': '1.0.0' }

function upload(data, options) {
  return new Promise((resolve, reject) => {
    const progress = []
    const tus = new Upload(data, {
      endpoint,
      retryDelays: [],
      ...options,
      onProgress: (sent, total) => progress.push([sent, total]),
      onSuccess: () => resolve({ url: tus.url, progress }),
      onError: reject,
    })
    tus.start()
  })
}

async function head(url) {
  const response = await fetch(url, { method: 'HEAD', headers: TUS })
  return { status: response.status, headers: Object.fromEntries(response.headers) }
}

// Upload-Checksum for every PATCH: sha1 of exactly the bytes the chunk holds.
function checksummed(data, chunkSize, corrupt = false) {
  return (request) => {
    if (request.getMethod() !== 'PATCH') return
    const offset = Number(request.getHeader('Upload-Offset'))
    const chunk = data.subarray(offset, offset + chunkSize)
    const digest = createHash('sha1').update(corrupt ? Buffer.from('x') : chunk).digest('base64')
    request.setHeader('Upload-Checksum', `sha1 ${digest}`)
  }
}

const results = {}

// 1. A whole upload, with non-Latin UTF-8 metadata echoed back by HEAD.
const plain = await upload(photo, {
  metadata: { filename: 'фото-日本.png', caption: 'Ελληνικά 😀' },
})
results.plain = { ...plain, head: await head(plain.url) }

// 2. Abort after the first chunks, then resume from the upload's URL.
const chunkSize = 256 * 1024
const aborted = await new Promise((resolve, reject) => {
  const tus = new Upload(other, {
    endpoint,
    chunkSize,
    retryDelays: [],
    metadata: { filename: 'resumed.png' },
    onProgress: (sent) => {
      if (sent >= 4 * chunkSize && tus.url) {
        tus.abort().then(() => resolve(tus.url), reject)
      }
    },
    onSuccess: () => reject(new Error('finished before it was aborted')),
    onError: reject,
  })
  tus.start()
})
const afterAbort = await head(aborted)
const resumed = await upload(other, {
  uploadUrl: aborted,
  chunkSize,
  metadata: { filename: 'resumed.png' },
})
results.resume = { abortedAt: Number(afterAbort.headers['upload-offset']), ...resumed,
  head: await head(resumed.url) }

// 3. parallelUploads: 4 partial uploads and a final one (concatenation).
const parallel = await upload(other, {
  parallelUploads: 4,
  metadata: { filename: 'parallel.png' },
})
results.parallel = { ...parallel, head: await head(parallel.url) }

// 4. Checksums on every chunk; then a wrong one, refused with 460.
const summed = await upload(photo, {
  chunkSize,
  metadata: { filename: 'summed.png' },
  onBeforeRequest: checksummed(photo, chunkSize),
})
results.checksum = { ...summed, head: await head(summed.url) }
try {
  await upload(photo, {
    chunkSize,
    metadata: { filename: 'corrupt.png' },
    onBeforeRequest: checksummed(photo, chunkSize, true),
  })
  results.badChecksum = { status: 'accepted' }
} catch (error) {
  results.badChecksum = { status: error.originalResponse?.getStatus() }
}

// 5. Termination: the upload is gone (404).
const doomed = await new Promise((resolve, reject) => {
  const tus = new Upload(photo, {
    endpoint,
    chunkSize,
    retryDelays: [],
    metadata: { filename: 'doomed.png' },
    onProgress: (sent) => {
      if (sent >= chunkSize && tus.url) tus.abort(true).then(() => resolve(tus.url), reject)
    },
    onSuccess: () => reject(new Error('finished before it was terminated')),
    onError: reject,
  })
  tus.start()
})
results.terminated = { url: doomed, head: await head(doomed) }

// 6. The IETF draft's interop version (protocol: 'ietf-draft-05'), on the same store.
const ietf = await upload(other, {
  protocol: 'ietf-draft-05',
  chunkSize,
  metadata: { filename: 'ietf.png' },
})
const ietfHead = await fetch(ietf.url, {
  method: 'HEAD',
  headers: { 'Upload-Draft-Interop-Version': '6' },
})
results.ietf = { ...ietf, head: { status: ietfHead.status, headers: Object.fromEntries(ietfHead.headers) } }

console.log(JSON.stringify(results))
