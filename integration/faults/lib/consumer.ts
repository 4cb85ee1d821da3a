/**
 * Runs `fixtures/consumer.mjs` in a child process and talks to it over IPC: waits for it to be
 * ready, for a kill point, for outcomes; kills it with SIGKILL; asks for heap / concurrency stats;
 * closes it gracefully. Every log line the child writes is kept (scanned for secrets and for the
 * errors a scenario expects to be reported).
 */
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const FIXTURE = fileURLToPath(new URL('../fixtures/consumer.mjs', import.meta.url));

/** A transport as the child builds it: the package's class with JSON options. */
export interface TransportSpec {
  readonly kind: 'rabbitmq' | 'redis-streams' | 'kafka';
  readonly options: Record<string, unknown>;
}

/** Where a child consumer hangs so the parent can SIGKILL it. */
export type KillPoint = 'mid-handler' | 'after-effect' | 'after-commit';

/** What the child consumer does (serialised into its environment). */
export interface ConsumerConfig {
  readonly transport: TransportSpec;
  readonly namespace: string;
  readonly eventType: string;
  readonly group: string;
  /** Redis URL of the effects and the idempotency store. */
  readonly effectsUrl: string;
  /** Prefix of the effect keys of this scenario (see the fixture's header). */
  readonly prefix: string;
  readonly concurrency?: number;
  readonly handlerDelayMs?: number;
  readonly maxAttempts?: number;
  /** Idempotency lease, ms (short, so a killed holder's key frees up quickly). */
  readonly leaseMs?: number;
  readonly maxPayloadBytes?: number;
  readonly maxHeaderBytes?: number;
  /** Hang at `point` on the delivery after `after` completed ones (then the parent kills). */
  readonly kill?: { readonly point: KillPoint; readonly after: number } | null;
  /** Throw a plain error until this attempt (exercises retries). */
  readonly failUntilAttempt?: number;
}

/** One IPC message from the child. */
export type ChildMessage =
  | { t: 'ready' }
  | { t: 'point'; point: KillPoint; key: string; id?: string }
  | {
      t: 'outcome';
      info: { id: string; group: string; attempt: number; idempotencyKey?: string };
      outcome: { status: string } & Record<string, unknown>;
    }
  | { t: 'log'; level: string; obj: unknown; msg?: string }
  | { t: 'connection'; state: string; detail?: string /** epoch ms in the child (same host clock) */; at: number }
  | {
      t: 'stats';
      heapUsed: number;
      external: number;
      maxInFlight: number;
      inFlight: number;
      handled: number;
      polluted: string[];
      health: unknown;
    }
  | { t: 'set-done' }
  | { t: 'closed' }
  | { t: 'fatal'; error: string };

type Waiter = { match: (m: ChildMessage) => boolean; resolve: (m: ChildMessage) => void; reject: (e: Error) => void };

/** A child consumer process. */
export class ConsumerProcess {
  /** Every message received, in order. */
  readonly messages: ChildMessage[] = [];
  /** stderr of the child (module errors surface here). */
  stderr = '';
  private readonly waiters = new Set<Waiter>();
  private exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private readonly exitPromise: Promise<void>;

  private constructor(
    readonly child: ChildProcess,
    readonly config: ConsumerConfig,
  ) {
    child.on('message', (m: ChildMessage) => {
      this.messages.push(m);
      for (const w of [...this.waiters]) {
        if (w.match(m)) {
          this.waiters.delete(w);
          w.resolve(m);
        }
      }
    });
    child.stderr?.on('data', (b: Buffer) => {
      this.stderr += b.toString();
    });
    this.exitPromise = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exited = { code, signal };
        const err = new Error(`consumer exited (code ${code}, signal ${signal}) ${this.stderr.slice(-2000)}`);
        for (const w of [...this.waiters]) w.reject(err);
        this.waiters.clear();
        resolve();
      });
    });
  }

  /** Starts a child and waits for it to subscribe (`ready`). */
  static async start(config: ConsumerConfig, options: { readyTimeoutMs?: number } = {}): Promise<ConsumerProcess> {
    const child = fork(FIXTURE, [], {
      env: { ...process.env, FAULTS_CONSUMER: JSON.stringify(config), NODE_OPTIONS: '' },
      execArgv: ['--expose-gc'],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      serialization: 'advanced',
    });
    const proc = new ConsumerProcess(child, config);
    try {
      const first = await proc.waitFor((m) => m.t === 'ready' || m.t === 'fatal', options.readyTimeoutMs ?? 60_000, 'consumer ready');
      if (first.t === 'fatal') throw new Error(`consumer failed to start: ${first.error}`);
    } catch (e) {
      proc.child.kill('SIGKILL');
      throw e;
    }
    return proc;
  }

  /** Whether the process has exited. */
  get alive(): boolean {
    return this.exited === undefined;
  }

  /** Resolves with the first message (already received or future) matching `match`. */
  waitFor(match: (m: ChildMessage) => boolean, timeoutMs: number, label: string): Promise<ChildMessage> {
    const seen = this.messages.find(match);
    if (seen) return Promise.resolve(seen);
    if (this.exited) return Promise.reject(new Error(`consumer already exited; never saw ${label}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label}`));
      }, timeoutMs);
      const waiter: Waiter = {
        match,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.waiters.add(waiter);
    });
  }

  /** Waits for the kill point, then SIGKILLs the child at once. Resolves with the point reached. */
  async killAtPoint(timeoutMs: number): Promise<Extract<ChildMessage, { t: 'point' }>> {
    const point = (await this.waitFor((m) => m.t === 'point', timeoutMs, `kill point ${this.config.kill?.point}`)) as Extract<
      ChildMessage,
      { t: 'point' }
    >;
    await this.kill();
    return point;
  }

  /** SIGKILL, and wait for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.exited) return;
    this.child.kill(signal);
    await this.exitPromise;
  }

  /** Forces GC in the child and returns its heap, highest concurrency seen, handled count. */
  async stats(): Promise<Extract<ChildMessage, { t: 'stats' }>> {
    const before = this.messages.length;
    this.child.send({ t: 'stats' });
    return (await this.waitFor((m) => m.t === 'stats' && this.messages.indexOf(m) >= before, 15_000, 'stats')) as Extract<
      ChildMessage,
      { t: 'stats' }
    >;
  }

  /** Changes the simulated handler work time of the running child. */
  async setHandlerDelay(ms: number): Promise<void> {
    const before = this.messages.length;
    this.child.send({ t: 'set', handlerDelayMs: ms });
    await this.waitFor((m) => m.t === 'set-done' && this.messages.indexOf(m) >= before, 10_000, 'set-done');
  }

  /** Graceful close (bus.close), then wait for the exit; SIGKILL if it does not exit in time. */
  async close(timeoutMs = 20_000): Promise<void> {
    if (this.exited) return;
    this.child.send({ t: 'close' });
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    await this.exitPromise;
    clearTimeout(timer);
  }

  /** Outcomes reported so far. */
  outcomes(): Extract<ChildMessage, { t: 'outcome' }>[] {
    return this.messages.filter((m): m is Extract<ChildMessage, { t: 'outcome' }> => m.t === 'outcome');
  }

  /** Log lines reported so far. */
  logs(): Extract<ChildMessage, { t: 'log' }>[] {
    return this.messages.filter((m): m is Extract<ChildMessage, { t: 'log' }> => m.t === 'log');
  }
}
