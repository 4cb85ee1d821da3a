// A failed start exits (issue 14, point 3): the demo, pointed at a port nothing listens on, says
// which broker it expected where and exits non-zero within 30 s — nothing (a reconnect loop, a
// timer, a socket) keeps the process alive after `bus.close()`. No broker is needed: the ports are dead.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const MAIN = fileURLToPath(new URL('../dist/main.js', import.meta.url));

/** Runs the demo with `env`; resolves with its exit code, output and how long it ran (killed after 45 s). */
function runDemo(env: Record<string, string>): Promise<{ code: number | null; output: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(process.execPath, [MAIN], { env: { ...process.env, NO_COLOR: '1', BUSBAR_NAMESPACE: '', ...env } });
    let output = '';
    child.stdout.on('data', (b: Buffer) => {
      output += b.toString();
    });
    child.stderr.on('data', (b: Buffer) => {
      output += b.toString();
    });
    const killer = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(killer);
      resolve({ code, output, ms: Date.now() - started });
    });
  });
}

const cases: [string, Record<string, string>, RegExp][] = [
  [
    'RabbitMQ',
    { BUSBAR_TRANSPORT: 'rabbitmq', BUSBAR_RABBITMQ_URL: 'amqp://guest:guest@127.0.0.1:5999' },
    /is RabbitMQ running at amqp:\/\/guest:\*\*\*@127\.0\.0\.1:5999\S*\?/,
  ],
  [
    'Redis',
    { BUSBAR_TRANSPORT: 'redis-streams', BUSBAR_REDIS_URL: 'redis://127.0.0.1:6999' },
    /is Redis running at redis:\/\/127\.0\.0\.1:6999\S*\?/,
  ],
  ['Kafka', { BUSBAR_TRANSPORT: 'kafka', BUSBAR_KAFKA_BROKERS: '127.0.0.1:9999' }, /is Kafka running at (?:kafka )?127\.0\.0\.1:9999\?/],
];

describe.concurrent('the demo with its broker down', () => {
  for (const [broker, env, line] of cases) {
    it(`exits non-zero within 30 s, asking whether ${broker} is running where it looked`, { timeout: 60_000 }, async () => {
      const { code, output, ms } = await runDemo(env);
      expect(output).toMatch(line);
      expect(output).toMatch(/ECONNREFUSED 127\.0\.0\.1:(5999|6999|9999)/);
      expect(output).not.toContain('guest:guest'); // the password never shows
      expect(code).toBe(1);
      expect(ms).toBeLessThan(30_000);
    });
  }
});
