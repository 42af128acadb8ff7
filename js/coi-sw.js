// A service worker that makes its pages cross-origin isolated on hosts that cannot send the headers
// (GitHub Pages, most static hosts): it adds Cross-Origin-Opener-Policy and
// Cross-Origin-Embedder-Policy to every response it passes on, so that SharedArrayBuffer, and with it
// podar's wasm threads, become available. The idea is coi-serviceworker's (Guido Zuidhof, MIT); this
// is our own, smaller version. Register it with `isolate()` from index.js; it must be served from the
// folder of the pages it is to isolate (a service worker's scope is its own folder and below).
self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));

self.addEventListener('fetch', (e) => {
  const req = e.request;
  // A request the browser may only answer from its cache, across origins, cannot be re-fetched.
  if (req.cache === 'only-if-cached' && req.mode !== 'same-origin') return;
  e.respondWith((async () => {
    const res = await fetch(req);
    // Opaque responses (no-cors, cross-origin) cannot be read or changed.
    if (res.status === 0) return res;
    const headers = new Headers(res.headers);
    headers.set('Cross-Origin-Opener-Policy', 'same-origin');
    headers.set('Cross-Origin-Embedder-Policy', 'require-corp');
    // Same-origin files may be embedded by the isolated pages.
    if (new URL(req.url).origin === self.location.origin) headers.set('Cross-Origin-Resource-Policy', 'same-origin');
    return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
  })());
});
