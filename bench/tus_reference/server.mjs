// The reference side of make bench's TL and TB: @tus/server with @tus/file-store, as its
// README sets them up, on 127.0.0.1:argv[2], storing under argv[3].
import http from 'node:http'
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'

const [port, directory] = process.argv.slice(2)
const tus = new Server({
  path: '/files',
  datastore: new FileStore({ directory }),
  maxSize: 4 * 1024 * 1024 * 1024,
})
http.createServer((req, res) => tus.handle(req, res)).listen(Number(port), '127.0.0.1', () => {
  console.log(`listening on ${port}`)
})
