// Drive tus-js-client (Node) against a box, for tests/test_tus_js_client.py.
// Usage: node upload.mjs '<json>' with {endpoint, token, file, mode, chunkSize, metadata};
// the box's certificate is trusted through NODE_EXTRA_CA_CERTS. Prints one JSON line:
// {ok, url, recordingId, evidence, offsetAtPause} or {ok: false, status, error}.
import { readFileSync } from 'node:fs'
import { Readable } from 'node:stream'
import { Upload } from 'tus-js-client'

const job = JSON.parse(process.argv[2])
const data = readFileSync(job.file)

function options(extra) {
  return {
    endpoint: job.endpoint,
    headers: { Authorization: `Bearer ${job.token}` },
    metadata: job.metadata,
    chunkSize: job.chunkSize ?? Number.POSITIVE_INFINITY,
    retryDelays: null,
    removeFingerprintOnSuccess: true,
    ...extra,
  }
}

function run(source, extra, pauseAfterFirstChunk = false) {
  return new Promise((resolve) => {
    let upload
    const opts = options({
      ...extra,
      onSuccess: ({ lastResponse }) =>
        resolve({
          ok: true,
          url: upload.url,
          recordingId: lastResponse.getHeader('EdgeBox-Recording-Id'),
          evidence: lastResponse.getHeader('EdgeBox-Evidence-Sha256'),
        }),
      onError: (error) =>
        resolve({
          ok: false,
          status: error.originalResponse ? error.originalResponse.getStatus() : null,
          error: String(error.message || error),
          body: error.originalResponse ? error.originalResponse.getBody() : null,
        }),
      onChunkComplete: (chunk, sent) => {
        if (pauseAfterFirstChunk) {
          pauseAfterFirstChunk = false
          upload.abort().then(() => resolve({ ok: true, paused: true, url: upload.url, offsetAtPause: sent }))
        }
      },
    })
    upload = new Upload(source, opts)
    upload.start()
  })
}

function streamOf(buffer, piece) {
  const pieces = []
  for (let at = 0; at < buffer.length; at += piece) pieces.push(buffer.subarray(at, at + piece))
  return Readable.from(pieces)
}

let result
switch (job.mode) {
  case 'plain':
    result = await run(data, {})
    break
  case 'resumed': {
    const first = await run(data, {}, true)
    if (!first.ok) {
      result = first
      break
    }
    result = await run(data, { uploadUrl: first.url })
    result.offsetAtPause = first.offsetAtPause
    result.firstUrl = first.url
    break
  }
  case 'parallel':
    result = await run(data, { parallelUploads: 2 })
    break
  case 'with-upload':
    result = await run(data, { uploadDataDuringCreation: true })
    break
  case 'deferred':
    result = await run(streamOf(data, 256 * 1024), { uploadLengthDeferred: true })
    break
  default:
    throw new Error(`unknown mode ${job.mode}`)
}
process.stdout.write(`${JSON.stringify(result)}\n`)
