/**
 * What the bus knows of its transport's connection: the state and last cause the transport
 * reported (its `connection` events and `health()`), `bus.ready()`, and the errors of a bus that
 * cannot reach its broker (`BrokerUnavailableError` naming the transport, its endpoint and the
 * last cause).
 */
import { BrokerUnavailableError, BusClosedError, BusError, ConfigError, describeError } from './errors.js';
import type { ConnectionState, Transport, TransportEvent, TransportHealth } from './spi.js';

/** Default of `bus.ready({ timeoutMs })`, ms. */
export const DEFAULT_READY_TIMEOUT_MS = 10_000;

/** Options of `bus.ready()`. */
export interface ReadyOptions {
  /**
   * How long to wait for a working connection before rejecting with `BrokerUnavailableError`, ms.
   * @defaultValue 10000
   */
  timeoutMs?: number;
}

/** `transport.endpoint`, else its name (a transport that does not say where it connects). */
export function endpointOf(transport: Transport): string {
  const endpoint = transport.endpoint;
  return typeof endpoint === 'string' && endpoint !== '' ? endpoint : transport.name;
}

/** Watches one transport's connection for the bus. */
export class ConnectionWatch {
  readonly #transport: Transport;
  /** Re-checks of pending waits (`ready()`, publishes during the first connect), run on every change. */
  readonly #waiters = new Set<() => void>();
  /** `transport.connect()` resolved. */
  #connected = false;
  /** `transport.connect()` rejected with this (already a `BusError`). */
  #connectError: BusError | undefined;
  #closed = false;
  /** The state of the last `connection` event; until one arrives, `health()` is asked. */
  #eventState: ConnectionState | undefined;
  /** When the bus saw the state change last (for a transport whose health lacks `since`). */
  #since = Date.now();
  #lastState: ConnectionState | undefined;

  constructor(transport: Transport) {
    this.#transport = transport;
  }

  /** Where the transport connects (redacted). */
  get endpoint(): string {
    return endpointOf(this.#transport);
  }

  /** The transport's current state (cheap once it reported a change). */
  get state(): ConnectionState {
    return this.#eventState ?? this.#transport.health().state;
  }

  /** `connect()` resolved and the state is `'connected'`: hand work to the transport. */
  get usable(): boolean {
    return this.#connected && this.state === 'connected';
  }

  /**
   * Still making its first connection — `connect()` not settled, or the state `'connecting'` —
   * so work may wait for it (within its own timeout) rather than fail at once.
   */
  get firstConnecting(): boolean {
    if (this.#connectError !== undefined || this.#closed) return false;
    const state = this.state;
    return state === 'connecting' || (!this.#connected && (state === 'disconnected' || state === 'connected'));
  }

  /** Follows `transport.connect()`'s promise. */
  follow(connecting: Promise<void>): void {
    connecting.then(
      () => {
        this.#connected = true;
        this.#notify();
      },
      (error: unknown) => {
        this.#connectError = this.wrap(error, 'failed to connect');
        this.#notify();
      },
    );
  }

  /** A `connection` event of the transport (called synchronously, before listeners hear of it). */
  onEvent(event: TransportEvent): void {
    this.#eventState = event.state;
    this.#notify();
  }

  /** The transport's health in the documented shape, whatever the transport returned. */
  health(): TransportHealth {
    const h = this.#transport.health();
    if (h.state !== this.#lastState) {
      this.#lastState = h.state;
      this.#since = Date.now();
    }
    const cause = h.cause ?? (h.detail === undefined || h.state === 'connected' ? undefined : new BrokerUnavailableError(h.detail));
    const since = typeof h.since === 'number' ? h.since : this.#since;
    return cause === undefined ? { state: h.state, since } : { state: h.state, since, cause, detail: h.detail ?? cause.message };
  }

  /**
   * Why work described by `what` (e.g. `publish of <id> not sent`) cannot be handed to the
   * transport now, or `undefined` while it can: `connect()`'s error; in `'failed'` the final cause;
   * otherwise a `BrokerUnavailableError` naming the transport, the endpoint, the state and the last
   * cause (with it as `cause`).
   */
  refusal(what: string): BusError | undefined {
    if (this.usable) return undefined;
    if (this.#connectError) return this.#connectError;
    if (this.#closed) return new BusClosedError();
    const h = this.health();
    if (h.state === 'failed' && h.cause) return h.cause;
    return this.unavailableError(`${what}: ${this.#transport.name} at ${this.endpoint} is ${h.state}`, h.cause);
  }

  /** `BrokerUnavailableError(message; last error: …)` with `cause`. */
  unavailableError(message: string, cause: BusError | undefined): BrokerUnavailableError {
    return new BrokerUnavailableError(cause ? `${message}; last error: ${cause.message}` : message, cause ? { cause } : {});
  }

  /** `error` as a `BusError` (a raw one wrapped as `BrokerUnavailableError` naming the endpoint, with `cause`). */
  wrap(error: unknown, what: string): BusError {
    if (error instanceof BusError) return error;
    return new BrokerUnavailableError(`${this.#transport.name} at ${this.endpoint} ${what}: ${describeError(error)}`, { cause: error });
  }

  /** See `EventBus.ready`. */
  ready(options: ReadyOptions = {}): Promise<void> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
    if (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs < 0) {
      return Promise.reject(new ConfigError(`ready(): timeoutMs must be a number ≥ 0 (ms), got ${String(timeoutMs)}`));
    }
    return this.#wait(
      () => this.#readiness(),
      timeoutMs,
      () => `${this.#transport.name} at ${this.endpoint} did not connect within ${timeoutMs} ms`,
    );
  }

  /**
   * Resolves once work may be handed to the transport, waiting (at most `timeoutMs`) only while the
   * first connection is being made; rejects with {@link refusal}`(what)` as soon as the transport is
   * anywhere else (reconnecting, disconnected, failed, closed), or with a `BrokerUnavailableError`
   * once `timeoutMs` passed.
   */
  whenUsable(what: string, timeoutMs: number): Promise<void> {
    return this.#wait(
      () => (this.usable ? true : this.firstConnecting ? undefined : this.refusal(what)),
      timeoutMs,
      () => `${what}: ${this.#transport.name} at ${this.endpoint} did not connect within ${timeoutMs} ms`,
    );
  }

  /** Rejects every pending wait with `BusClosedError`. */
  close(): void {
    this.#closed = true;
    this.#notify();
  }

  /** `true`: ready; an error: `ready()` rejects with it; `undefined`: keep waiting. */
  #readiness(): Error | true | undefined {
    if (this.#closed) return new BusClosedError();
    if (this.#connectError) return this.#connectError;
    const h = this.health();
    const name = this.#transport.name;
    if (h.state === 'failed') return h.cause ?? this.unavailableError(`${name} at ${this.endpoint} failed`, undefined);
    if (h.state === 'closed') return new BusClosedError(`${name} transport is closed`);
    if (h.state === 'connected' && this.#connected) return true;
    return undefined;
  }

  /**
   * Waits until `verdict` says `true` (resolve) or an error (reject), re-asked on every change;
   * after `timeoutMs`, rejects with `BrokerUnavailableError(timedOut() (state …); last error: …)`.
   * The timer is ref'd while it waits (a process awaiting a verdict must reach it) and cleared when
   * settled; closing the watch settles every wait.
   */
  #wait(verdict: () => Error | true | undefined, timeoutMs: number, timedOut: () => string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const check = (): void => {
        const v = this.#closed ? new BusClosedError() : verdict();
        if (v === undefined) return;
        this.#waiters.delete(check);
        if (timer) clearTimeout(timer);
        if (v === true) resolve();
        else reject(v);
      };
      this.#waiters.add(check);
      check();
      if (!this.#waiters.has(check)) return;
      timer = setTimeout(() => {
        this.#waiters.delete(check);
        const h = this.health();
        reject(this.unavailableError(`${timedOut()} (state ${h.state})`, h.cause));
      }, timeoutMs);
    });
  }

  #notify(): void {
    for (const check of [...this.#waiters]) check();
  }
}
