// Shared by the end-to-end test and the in-page benchmark: the local server, Debian's Chromium
// (never a downloaded browser), and waiting on the page's status line.
import { chromium } from 'playwright-core';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
export const podar = path.join(root, 'target/release/podar');

/** Runs the CLI from the repository root; its stdout as a string. */
export const cli = (...args) => execFileSync(podar, args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });

/** Unpacks the page's zip `zip` (one folder inside, named as the archive `name`) into `dir`. */
export function unzipFolder(zip, name, dir) {
  const folder = path.join(path.dirname(dir), name.replace(/\.zip$/, ''));
  for (const d of [dir, folder]) fs.rmSync(d, { recursive: true, force: true });
  execFileSync('python3', ['-m', 'zipfile', '-e', zip, path.dirname(dir)]);
  fs.renameSync(folder, dir);
}

/** `podar serve --port 0 --root dir [...extra]`; resolves to {proc, url} once it listens. */
export function serve(dir, extra = []) {
  return new Promise((resolve, reject) => {
    const p = spawn(podar, ['serve', '--port', '0', '--root', dir, ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => {
      err += d;
      const m = /http:\/\/127\.0\.0\.1:(\d+)\//.exec(err);
      if (m) resolve({ proc: p, url: `http://127.0.0.1:${m[1]}/` });
    });
    p.on('exit', (c) => reject(new Error(`podar serve exited ${c}: ${err}`)));
  });
}

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-dev-shm-usage', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-quic', '--no-first-run'];

export function launch(extraArgs = []) {
  return chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, ...extraArgs] });
}

/** A browser context with a profile on disk (in `dir`), as a user's is: its origin's private file
 * system is on disk. A `launch()` context's lives in memory, and refuses a write of a few GB
 * ("Failed to write data to data pipe", at 2.2 GB of a 1B model's bf16 zip). */
export function launchOnDisk(dir, options = {}) {
  return chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, args: CHROMIUM_ARGS, ...options });
}

/** A function that waits for the status line to match `re`, ignoring what it said when last read. */
export function statusWaiter(page) {
  let seen = '';
  return async (re, ms) => {
    await page.waitForFunction(([src, old]) => {
      const t = document.getElementById('status').textContent;
      return t !== old && new RegExp(src).test(t);
    }, [re.source, seen], { timeout: ms });
    seen = await page.getByRole('status').textContent();
    return seen;
  };
}

/** Opens the page and waits for the engine (the worker and its wasm) to start. */
export async function openPage(page, url) {
  await page.goto(url);
  await page.waitForFunction(() => /Engine ready/.test(document.getElementById('engine').textContent), null, { timeout: 60_000 });
  return page.locator('#engine').textContent();
}

/**
 * Makes the page's Download save into the origin's private file system (OPFS). Chromium has
 * `showSaveFilePicker`, so the page writes the export into a file the user picks; the picker (a
 * dialog headless Chromium cannot answer) is replaced, from the next navigation on, by one that
 * picks a file there, written through the same FileSystemWritableFileStream. `window.picked` keeps
 * the picker's options.
 */
export async function pickIntoPrivateFiles(page) {
  await page.addInitScript(() => {
    window.showSaveFilePicker = async (o) => {
      window.picked = o;
      const dir = await navigator.storage.getDirectory();
      return dir.getFileHandle(o.suggestedName, { create: true });
    };
  });
}

/** The size of the file the page last saved through `pickIntoPrivateFiles`' picker; `remove`
 * deletes it afterwards. */
export function pickedSize(page, { remove = false } = {}) {
  return page.evaluate(async (remove) => {
    const dir = await navigator.storage.getDirectory();
    const size = (await (await dir.getFileHandle(window.picked.suggestedName)).getFile()).size;
    if (remove) await dir.removeEntry(window.picked.suggestedName);
    return size;
  }, remove);
}

/** The file the page last saved through `pickIntoPrivateFiles`' picker, handed over as a download
 * (Playwright's Download), and its size as the private file system holds it. */
export async function pickedFile(page) {
  const [download, size] = await Promise.all([page.waitForEvent('download', { timeout: 300_000 }), page.evaluate(async () => {
    const dir = await navigator.storage.getDirectory();
    const file = await (await dir.getFileHandle(window.picked.suggestedName)).getFile();
    const a = Object.assign(document.createElement('a'), { href: URL.createObjectURL(file), download: file.name });
    a.click();
    return file.size;
  })]);
  return { download, size };
}
