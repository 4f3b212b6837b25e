// The /upload page: Uppy's Dashboard sending every file by tus to /api/tus/. Once a file is
// stored, the server names its catalog record (Clustr-File-Url), listed below the dashboard.
;(function () {
  'use strict'
  const { Uppy, Dashboard, Tus } = window.ClustrUppy
  const uppy = new Uppy({ autoProceed: false })
    .use(Dashboard, {
      inline: true,
      target: '#uppy',
      width: '100%',
      height: 460,
      proudlyDisplayPoweredByUppy: false,
      showProgressDetails: true,
    })
    .use(Tus, {
      endpoint: '/api/tus/',
      chunkSize: 5 * 1024 * 1024,
      limit: 8,
      retryDelays: [0, 1000, 3000, 5000],
      removeFingerprintOnSuccess: true,
    })

  const list = document.getElementById('stored-list')
  uppy.on('upload-success', (file, response) => {
    const xhr = response.body && response.body.xhr
    const record = xhr ? xhr.getResponseHeader('Clustr-File-Url') : null
    const item = document.createElement('li')
    item.textContent = file.name + ' '
    if (record) {
      const link = document.createElement('a')
      link.href = record
      link.textContent = 'record'
      item.appendChild(link)
      item.dataset.record = record
    }
    list.appendChild(item)
    document.getElementById('stored').hidden = false
  })
  window.clustrUppy = uppy // for the browser test, and for the curious
})()
