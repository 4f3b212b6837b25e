// The /upload page's bundle: Uppy's core, Dashboard and Tus plugins and their styles, exposed
// as window.ClustrUppy for clustr_aio/web/upload_page/upload.js. Rebuild with `npm ci && npm
// run build` here after changing a version in package.json; commit the output.
import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import Tus from '@uppy/tus'
import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'

window.ClustrUppy = { Uppy, Dashboard, Tus }
