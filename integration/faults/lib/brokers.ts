/**
 * Brokers the fault suite owns (so it may kill, pause and restart them without touching the
 * shared ones other suites use) and the few commands it runs against the shared RabbitMQ.
 *
 * - {@link OwnRedis}: a `redis-server` on a free port, AOF with `appendfsync always`, its own temp
 *   dir, a password; killed with SIGKILL and restarted on the same dir.
 * - {@link OwnKafka}: `integration/brokers/kafka/kafka.sh` with its own ports and data dir, plus a
 *   second listener advertised at a TCP proxy's port; killed with SIGKILL and restarted on the same
 *   log dir.
 * - {@link rabbitmqctl}: `close_all_connections`, `stop_app` / `start_app` on the shared broker.
 *
 * Every broker started here is stopped by the suite (and its data removed); every broker
 * restarted here is left running.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { ROOT } from './report.js';

/**
 * A free TCP port on 127.0.0.1 **below the ephemeral range**. A broker we restart must get its
 * port back: inside the ephemeral range, a client reconnecting to the dead port can be given that
 * very port as its own source port (TCP self-connect) and hold it, so the broker cannot bind again.
 */
export async function freePort(): Promise<number> {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: keep the usual default
  }
  const floor = 10_000;
  const ceiling = Math.max(floor + 1000, low - 1);
  for (let i = 0; i < 100; i++) {
    const port = floor + Math.floor(Math.random() * (ceiling - floor));
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port in ${floor}..${ceiling}`);
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/**
 * Polls `check` until it returns a truthy value or `timeoutMs` passes (then throws with `label`).
 * For conditions with no event to await (a broker answering again, a count in Redis).
 */
export async function until<T>(
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs: number,
  label: string,
  everyMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${label}${last ? ` (last error: ${String(last)})` : ''}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Runs a command; resolves with stdout, rejects with stderr. */
export function run(cmd: string, args: readonly string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { env: options.env ?? process.env, timeout: options.timeoutMs ?? 120_000, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`${cmd} ${args.join(' ')} failed: ${error.message}\n${stderr.slice(-3000)}`));
        else resolve(stdout);
      },
    );
  });
}

/** A persistent redis-server of our own. */
export class OwnRedis {
  private proc: ChildProcess | undefined;
  private constructor(
    readonly port: number,
    readonly dir: string,
    readonly password: string,
  ) {}

  /** Starts it on a free port with AOF (`appendfsync always`) and a password. */
  static async start(password: string): Promise<OwnRedis> {
    const r = new OwnRedis(await freePort(), mkdtempSync(join(tmpdir(), 'busbar-faults-redis-')), password);
    await r.launch();
    return r;
  }

  /** `redis://:<password>@127.0.0.1:<port>` (direct, not through a proxy). */
  get url(): string {
    return `redis://:${this.password}@127.0.0.1:${this.port}`;
  }

  /** The pid of the running server. */
  get pid(): number | undefined {
    return this.proc?.pid;
  }

  private async launch(): Promise<void> {
    const proc = spawn(
      'redis-server',
      [
        '--port',
        String(this.port),
        '--bind',
        '127.0.0.1',
        '--dir',
        this.dir,
        '--appendonly',
        'yes',
        '--appendfsync',
        'always',
        '--save',
        '',
        '--requirepass',
        this.password,
        '--daemonize',
        'no',
        '--logfile',
        join(this.dir, 'redis.log'),
      ],
      { stdio: 'ignore' },
    );
    this.proc = proc;
    await until(
      async () => {
        if (proc.exitCode !== null) throw new Error(`redis-server exited with ${proc.exitCode}`);
        const c = new Redis({
          port: this.port,
          host: '127.0.0.1',
          password: this.password,
          lazyConnect: true,
          maxRetriesPerRequest: 0,
          retryStrategy: () => null,
        });
        c.on('error', () => {});
        try {
          await c.connect();
          return (await c.ping()) === 'PONG';
        } finally {
          c.disconnect();
        }
      },
      20_000,
      `own redis-server on ${this.port}`,
    );
  }

  /** A client of our own on it (for CLIENT KILL, raw writes, inspection). */
  client(): Redis {
    const c = new Redis({ port: this.port, host: '127.0.0.1', password: this.password, maxRetriesPerRequest: null });
    c.on('error', () => {});
    return c;
  }

  /** SIGKILL (no shutdown save: the AOF is all there is), wait for the exit. */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await exited;
  }

  /** Kill -9, stay down for `downMs` (the outage), then start again on the same dir and port. */
  async restart(downMs = 0): Promise<void> {
    await this.kill();
    if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
    await this.launch();
  }

  /** SIGSTOP / SIGCONT. */
  pause(): void {
    this.proc?.kill('SIGSTOP');
  }
  resume(): void {
    this.proc?.kill('SIGCONT');
  }

  /** Stops it and removes its dir. */
  async stop(): Promise<void> {
    this.resume();
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

const KAFKA_SH = join(ROOT, 'integration', 'brokers', 'kafka', 'kafka.sh');

/** A Kafka broker of our own (kafka.sh with its own ports and data dir). */
export class OwnKafka {
  private constructor(
    readonly port: number,
    readonly controllerPort: number,
    /** Port the proxy listens on (advertised by the PROXY listener). */
    readonly proxyPort: number,
    /** Port the broker's PROXY listener binds (the proxy forwards to it). */
    readonly proxyListenPort: number,
    readonly dataDir: string,
  ) {}

  /** Starts it (fetches nothing when the jar cache is complete). */
  static async start(): Promise<OwnKafka> {
    const k = new OwnKafka(
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
      mkdtempSync(join(tmpdir(), 'busbar-faults-kafka-')),
    );
    try {
      await k.startAgain();
    } catch (error) {
      await k.stop().catch(() => {});
      throw error;
    }
    return k;
  }

  private env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      BUSBAR_KAFKA_PORT: String(this.port),
      BUSBAR_KAFKA_CONTROLLER_PORT: String(this.controllerPort),
      BUSBAR_KAFKA_DATA_DIR: this.dataDir,
      BUSBAR_KAFKA_PROXY_PORT: String(this.proxyPort),
      BUSBAR_KAFKA_PROXY_LISTEN_PORT: String(this.proxyListenPort),
      BUSBAR_KAFKA_STOP_TIMEOUT: '10',
      // The fault suite needs no SASL listener, and port + 3 of a random port could be taken.
      BUSBAR_KAFKA_SASL_PORT: 'off',
    };
  }

  private script(command: 'start' | 'stop' | 'reset'): Promise<string> {
    return run('bash', [KAFKA_SH, command], { env: this.env(), timeoutMs: 180_000 });
  }

  /** Direct bootstrap address (PLAINTEXT listener). */
  get direct(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** The broker JVM's pid. */
  pid(): number {
    const pid = Number(readFileSync(join(this.dataDir, 'kafka.pid'), 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 0) throw new Error('own Kafka has no pid file');
    return pid;
  }

  /** SIGKILL the broker and start it again on the same log dir. */
  async restart(): Promise<void> {
    const pid = this.pid();
    process.kill(pid, 'SIGKILL');
    await until(() => !alive(pid), 20_000, `kafka pid ${pid} to exit`);
    await this.startAgain();
  }

  /**
   * `kafka.sh start`, up to three times: a failed try is printed (so a flaky start stays visible),
   * then `kafka.sh stop` clears whatever it left (a JVM that never got ready, a stale pid file)
   * before the next. The broker must be left running; the last failure is thrown with the
   * broker's log tail that kafka.sh printed.
   */
  private async startAgain(): Promise<void> {
    const tries = 3;
    for (let i = 1; ; i++) {
      try {
        await this.script('start');
        return;
      } catch (error) {
        if (i >= tries) throw error;
        console.warn(
          `[faults] own Kafka did not start (try ${i} of ${tries}); stopping what is left and trying again: ${String(error).slice(-4000)}`,
        );
        await this.script('stop').catch((e) => console.warn(`[faults] own Kafka stop failed: ${String(e).slice(-1000)}`));
      }
    }
  }

  /** Whether the broker JVM of the pid file is alive (not stopped by us, not crashed). */
  running(): boolean {
    try {
      return alive(this.pid());
    } catch {
      return false;
    }
  }

  /**
   * Before each scenario: a broker left paused is resumed, one that is not running is started
   * again (and said so), so one scenario's failure does not become every later scenario's.
   */
  async ensureRunning(): Promise<void> {
    try {
      this.resume();
    } catch {
      // no pid: started below
    }
    if (this.running()) return;
    console.warn('[faults] own Kafka was not running before this scenario (an earlier one left it down); starting it');
    await this.startAgain();
  }

  /** SIGSTOP / SIGCONT of the broker JVM. */
  pause(): void {
    process.kill(this.pid(), 'SIGSTOP');
  }
  resume(): void {
    process.kill(this.pid(), 'SIGCONT');
  }

  /** Stops it and deletes its data. */
  async stop(): Promise<void> {
    try {
      this.resume();
    } catch {
      // not running
    }
    await this.script('reset');
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.split(' ')[2] !== 'Z';
  } catch {
    return false;
  }
}

/** `rabbitmqctl <args>` on the local node. */
export function rabbitmqctl(...args: string[]): Promise<string> {
  return run('rabbitmqctl', ['-q', ...args], { timeoutMs: 120_000 });
}

/** Whether `rabbitmqctl` can talk to a local node (the broker-level RabbitMQ faults need it). */
export async function rabbitmqctlAvailable(): Promise<boolean> {
  try {
    await rabbitmqctl('status');
    return true;
  } catch {
    return false;
  }
}
