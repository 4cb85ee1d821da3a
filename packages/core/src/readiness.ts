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
  /** Re-checks of pending `ready()` calls, run on every reported change. */
  readonly #waiters = new Set<() => void>();
  /** `transport.connect()` resolved. */
  #connected = false;
  /** `transport.connect()` rejected with this (already a `BusError`). */
  #connectError: BusError | undefined;
  #closed = false;
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
  onEvent(_event: TransportEvent): void {
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
   * The error of an operation refused because the transport is not connected, or `undefined` while
   * it is. `'failed'`: its final cause; otherwise a `BrokerUnavailableError` naming the transport,
   * the endpoint, the state and the last cause.
   */
  unavailable(what: string): BusError | undefined {
    const h = this.health();
    if (h.state === 'connected') return undefined;
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
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (error?: Error): void => {
        this.#waiters.delete(check);
        if (timer) clearTimeout(timer);
        if (error) reject(error);
        else resolve();
      };
      const check = (): void => {
        const error = this.#verdict();
        if (error !== undefined) finish(error === true ? undefined : error);
      };
      this.#waiters.add(check);
      check();
      if (!this.#waiters.has(check)) return;
      // Ref'd while someone waits (a process awaiting ready() must reach its verdict), cleared when settled.
      timer = setTimeout(() => {
        const h = this.health();
        finish(
          this.unavailableError(
            `${this.#transport.name} at ${this.endpoint} did not connect within ${timeoutMs} ms (state ${h.state})`,
            h.cause,
          ),
        );
      }, timeoutMs);
    });
  }

  /** `true`: ready; an error: `ready()` rejects with it; `undefined`: keep waiting. */
  #verdict(): Error | true | undefined {
    if (this.#closed) return new BusClosedError();
    if (this.#connectError) return this.#connectError;
    const h = this.health();
    const name = this.#transport.name;
    if (h.state === 'failed') return h.cause ?? this.unavailableError(`${name} at ${this.endpoint} failed`, undefined);
    if (h.state === 'closed') return new BusClosedError(`${name} transport is closed`);
    if (h.state === 'connected' && this.#connected) return true;
    return undefined;
  }

  /** Rejects every pending `ready()` with `BusClosedError`. */
  close(): void {
    this.#closed = true;
    this.#notify();
  }

  #notify(): void {
    for (const check of [...this.#waiters]) check();
  }
}
