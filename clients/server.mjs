// Start and stop a real periode-sse for the Node client tests (browser and eventsource).
// Every wait here is bounded: a test that hangs is a test that fails.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const BIN = process.env.PERIODE_SSE_BIN || join(ROOT, 'target/release/periode-sse');

/** A fresh folder under target/ for one run's database. */
export function tempDir(name) {
  const base = join(ROOT, 'target', name);
  mkdirSync(base, { recursive: true });
  return mkdtempSync(join(base, 'run-'));
}

/**
 * Start the server and resolve once it logs its address. `listen` may use port 0; the
 * returned `base` is the real `http://127.0.0.1:PORT`.
 */
export function startServer({ db, listen = '127.0.0.1:0', args = [], timeoutMs = 10000 }) {
  const argv = ['--demo', '--db', db, '--listen', listen, '--heartbeat', '1', ...args];
  const child = spawn(BIN, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  const exited = new Promise((res) => child.on('exit', (code, signal) => res({ code, signal })));
  const ready = new Promise((res, rej) => {
    const timer = setTimeout(
      () => rej(new Error(`server did not start in ${timeoutMs} ms:\n${stderr}`)), timeoutMs);
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
      if (process.env.VERBOSE) process.stderr.write(chunk);
      const m = /listening on (http:\/\/[0-9.]+:\d+)/.exec(stderr);
      if (m) { clearTimeout(timer); res(m[1]); }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`server exited (${code ?? signal}) before listening:\n${stderr}`));
    });
  });
  return ready.then((base) => ({
    base,
    child,
    log: () => stderr,
    /** SIGTERM, then the exit code (SPEC §5: exit 0 within 5 s). */
    async stop(limitMs = 6000) {
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), limitMs);
      const { code, signal } = await exited;
      clearTimeout(killer);
      if (code !== 0) throw new Error(`server exit ${code ?? signal} after SIGTERM:\n${stderr}`);
      return code;
    },
  }));
}

export function token(db, user = 13, role = 'user') {
  return execFileSync(BIN, ['token', String(user), '--role', role, '--db', db]).toString().trim();
}

/** POST a transaction with the Authorization header; the answer must be 201. */
export async function recordSpending(base, tok, amount, description = 'client test') {
  const res = await fetch(`${base}/api/periode-limit/transactions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${tok}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ amount, description }),
    signal: AbortSignal.timeout(5000),
  });
  const body = await res.text();
  if (res.status !== 201) throw new Error(`POST transactions: ${res.status} ${body}`);
  return JSON.parse(body);
}

export function sleep(ms) { return new Promise((res) => setTimeout(res, ms)); }

export function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

/** Stop for clean-up in `finally`: never throws, so the real error is the one reported. */
export async function stopQuietly(server) {
  try { await server?.stop(); } catch (err) { console.error(`(clean-up) ${err.message}`); }
}
