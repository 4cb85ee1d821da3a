// The fault proxy itself, against a local echo server: each mode does what the scenarios rely on.
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TcpProxy } from './lib/proxy.js';

let echo: Server;
let echoPort = 0;
const serverSockets = new Set<Socket>();
const serverClosed: string[] = [];

beforeAll(async () => {
  echo = createServer((s) => {
    serverSockets.add(s);
    s.on('data', (d) => s.write(d));
    s.on('error', (e: NodeJS.ErrnoException) => serverClosed.push(`error:${e.code}`));
    s.on('close', () => {
      serverSockets.delete(s);
      serverClosed.push('close');
    });
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  const a = echo.address();
  echoPort = typeof a === 'object' && a ? a.port : 0;
});

afterAll(async () => {
  for (const s of serverSockets) s.destroy();
  await new Promise((r) => echo.close(r));
});

/** A client with helpers to await an echo, an end, an error. */
async function client(port: number) {
  const sock = connect({ port, host: '127.0.0.1' });
  const received: Buffer[] = [];
  let ended: string | undefined;
  const endWaiters: ((why: string) => void)[] = [];
  const finish = (why: string) => {
    if (ended) return;
    ended = why;
    for (const w of endWaiters.splice(0)) w(why);
  };
  const dataWaiters: (() => void)[] = [];
  sock.on('data', (d) => {
    received.push(d);
    for (const w of dataWaiters.splice(0)) w();
  });
  sock.on('end', () => finish('fin'));
  sock.on('error', (e: NodeJS.ErrnoException) => finish(`error:${e.code}`));
  sock.on('close', () => finish('close'));
  await new Promise<void>((r, j) => {
    sock.once('connect', () => r());
    sock.once('error', j);
  });
  return {
    sock,
    text: () => Buffer.concat(received).toString(),
    /** Resolves when `text` appears, or with false after `ms`. */
    async echoed(text: string, ms: number): Promise<boolean> {
      const deadline = Date.now() + ms;
      while (!Buffer.concat(received).toString().includes(text)) {
        const left = deadline - Date.now();
        if (left <= 0 || ended) return false;
        await new Promise<void>((r) => {
          const t = setTimeout(r, left);
          dataWaiters.push(() => {
            clearTimeout(t);
            r();
          });
        });
      }
      return true;
    },
    ended: (ms: number) =>
      ended
        ? Promise.resolve(ended)
        : new Promise<string | undefined>((r) => {
            const t = setTimeout(() => r(undefined), ms);
            endWaiters.push((why) => {
              clearTimeout(t);
              r(why);
            });
          }),
  };
}

describe('fault proxy', () => {
  it('passes traffic both ways', async () => {
    const proxy = await TcpProxy.start({ targetPort: echoPort });
    try {
      const c = await client(proxy.port);
      c.sock.write('hello');
      expect(await c.echoed('hello', 2000)).toBe(true);
      c.sock.destroy();
    } finally {
      await proxy.close();
    }
  });

  it('cut closes both sides with a FIN, reset with an RST', async () => {
    const proxy = await TcpProxy.start({ targetPort: echoPort });
    try {
      const a = await client(proxy.port);
      a.sock.write('x');
      expect(await a.echoed('x', 2000)).toBe(true);
      expect(proxy.cut()).toBe(1);
      expect(await a.ended(2000)).toBe('fin');
      const b = await client(proxy.port);
      b.sock.write('y');
      expect(await b.echoed('y', 2000)).toBe(true);
      expect(proxy.reset()).toBe(1);
      expect(await b.ended(2000)).toBe('error:ECONNRESET');
    } finally {
      await proxy.close();
    }
  });

  it('black-holes silently, then resumes without losing bytes', async () => {
    const proxy = await TcpProxy.start({ targetPort: echoPort });
    try {
      const c = await client(proxy.port);
      c.sock.write('a');
      expect(await c.echoed('a', 2000)).toBe(true);
      proxy.setMode('blackhole');
      c.sock.write('b');
      expect(await c.echoed('b', 500)).toBe(false); // silence, and no error either
      expect(await c.ended(10)).toBeUndefined();
      const fresh = await client(proxy.port); // accepted, never answered
      fresh.sock.write('c');
      expect(await fresh.echoed('c', 300)).toBe(false);
      proxy.setMode('pass');
      expect(await c.echoed('b', 2000)).toBe(true);
      expect(await fresh.echoed('c', 2000)).toBe(true);
      c.sock.destroy();
      fresh.sock.destroy();
    } finally {
      await proxy.close();
    }
  });

  it('half-opens: the broker side is closed, the client side stays open and silent', async () => {
    const proxy = await TcpProxy.start({ targetPort: echoPort });
    try {
      const c = await client(proxy.port);
      c.sock.write('a');
      expect(await c.echoed('a', 2000)).toBe(true);
      const closedBefore = serverClosed.length;
      expect(proxy.halfOpen()).toBe(1);
      // The broker side sees its connection end…
      await expect.poll(() => serverClosed.length, { timeout: 2000 }).toBeGreaterThan(closedBefore);
      // …the client side does not: writes succeed, nothing answers.
      c.sock.write('b');
      expect(await c.echoed('b', 500)).toBe(false);
      expect(await c.ended(10)).toBeUndefined();
      // New connections pass.
      const d = await client(proxy.port);
      d.sock.write('d');
      expect(await d.echoed('d', 2000)).toBe(true);
      d.sock.destroy();
      proxy.cut();
      expect(await c.ended(2000)).toBeDefined();
    } finally {
      await proxy.close();
    }
  });

  it('refuses connections while the broker is "down", accepts them again after', async () => {
    const proxy = await TcpProxy.start({ targetPort: echoPort, mode: 'refuse' });
    try {
      const refused = await client(proxy.port).then(
        async (c) => c.ended(2000),
        (e: NodeJS.ErrnoException) => `error:${e.code}`,
      );
      expect(refused).toMatch(/ECONNRESET|close|fin/);
      proxy.setMode('pass');
      const c = await client(proxy.port);
      c.sock.write('up');
      expect(await c.echoed('up', 2000)).toBe(true);
      c.sock.destroy();
    } finally {
      await proxy.close();
    }
  });
  it('loses the answer to a matched request and resets the link; disarm takes an unfired one back', async () => {
    const proxy = await TcpProxy.start({ targetPort: echoPort });
    try {
      const c = await client(proxy.port);
      c.sock.write('a');
      expect(await c.echoed('a', 2000)).toBe(true);
      const chunks = proxy.stats.chunksUp;
      expect(chunks).toBeGreaterThanOrEqual(1);
      // Skips one matching request, loses the answer to the next one.
      const lost = proxy.loseResponse((chunk) => chunk.toString().startsWith('req'), 1);
      expect(proxy.isArmed).toBe(true);
      c.sock.write('req1');
      expect(await c.echoed('req1', 2000)).toBe(true);
      c.sock.write('req2');
      await lost;
      expect(await c.ended(2000)).toBe('error:ECONNRESET');
      expect(c.text()).not.toContain('req2');
      expect(proxy.isArmed).toBe(false);
      expect(proxy.stats.chunksUp).toBe(chunks + 2);
      // Armed, then disarmed before anything matched: traffic passes untouched.
      void proxy.loseResponse(() => true);
      proxy.disarm();
      expect(proxy.isArmed).toBe(false);
      const d = await client(proxy.port);
      d.sock.write('free');
      expect(await d.echoed('free', 2000)).toBe(true);
      expect(await d.ended(200)).toBeUndefined();
      d.sock.destroy();
    } finally {
      await proxy.close();
    }
  });
});
