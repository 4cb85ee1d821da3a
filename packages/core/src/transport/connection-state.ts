import { BrokerUnavailableError, type BusError } from '../errors.js';
import type { ConnectionState, TransportContext, TransportEvent, TransportHealth } from '../spi.js';

/** Options of {@link ConnectionStateCell}. */
export interface ConnectionStateCellOptions {
  /** The state before `connect`. @defaultValue 'disconnected' */
  readonly initial?: ConnectionState;
  /**
   * Called after every change of state (after core was told), e.g. to log it, with the last
   * error's credential-free message and the error itself while not connected.
   */
  readonly onChange?: (state: ConnectionState, detail: string | undefined, cause: BusError | undefined) => void;
  /** Epoch ms source of `since`. @defaultValue Date.now */
  readonly now?: () => number;
}

/**
 * The connection state of a transport, and the bookkeeping every transport repeats around it:
 * report each change to core (`TransportContext.emit`) exactly once, remember since when and the
 * last error, and answer `Transport.health()`.
 *
 * - {@link set} changes the state; only a change is reported (and moves `since`). Reaching
 *   `'connected'` forgets the last error.
 * - {@link fail} records an error without changing state; `set(state, error)` does both. An error
 *   is a credential-free `BusError` (wrap a client error: `new BrokerUnavailableError(…, { cause })`)
 *   or a credential-free string (`describeError(e)`), kept as a `BrokerUnavailableError`.
 * - {@link failed} moves to the final state `'failed'` with its error (an `AuthenticationError` …).
 *   From `'failed'` only `'closed'` is accepted: `set` to anything else is ignored (returns
 *   `false`). A transport checks `cell.state === 'failed'` before reconnecting.
 * - The last error is reported as `cause` (and its message as `detail`) — in the `connection` event
 *   and in {@link health} — while the state is anything but `'connected'`.
 *
 * Give it the context in `connect` ({@link attach}); changes before that are kept, not reported.
 */
export class ConnectionStateCell {
  #state: ConnectionState;
  #since: number;
  #lastError: BusError | undefined;
  #context: Pick<TransportContext, 'emit'> | undefined;
  readonly #onChange: ConnectionStateCellOptions['onChange'];
  readonly #now: () => number;

  constructor(options: ConnectionStateCellOptions = {}) {
    this.#state = options.initial ?? 'disconnected';
    this.#onChange = options.onChange;
    this.#now = options.now ?? Date.now;
    this.#since = this.#now();
  }

  /** The current state. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** Epoch ms of the last change of state. */
  get since(): number {
    return this.#since;
  }

  /** The last recorded error, while not connected. */
  get cause(): BusError | undefined {
    return this.#state === 'connected' ? undefined : this.#lastError;
  }

  /** The last recorded error's message, while not connected. */
  get detail(): string | undefined {
    return this.cause?.message;
  }

  /** Reports later changes through `context` (call it first thing in `Transport.connect`). */
  attach(context: Pick<TransportContext, 'emit'>): void {
    this.#context = context;
  }

  /** Records `error` as the last error without changing state (ignored once `'failed'`). */
  fail(error: string | BusError): void {
    if (this.#state === 'failed') return;
    this.#lastError = toBusError(error);
  }

  /**
   * Moves to the final state `'failed'` with `error` as its cause. The first final error is kept
   * (a later call, or one after `'closed'`, changes nothing). Returns whether the state changed.
   */
  failed(error: BusError): boolean {
    if (this.#state === 'failed' || this.#state === 'closed') return false;
    this.#lastError = error;
    return this.#move('failed');
  }

  /**
   * Moves to `state` (recording `error` as the last error when given). Reports a change to core
   * and to `onChange`; returns whether the state changed. From `'failed'` only `'closed'` is
   * accepted.
   */
  set(state: ConnectionState, error?: string | BusError): boolean {
    if (this.#state === 'failed' && state !== 'closed' && state !== 'failed') return false;
    if (state === 'failed') return error === undefined ? this.#move('failed') : this.failed(toBusError(error));
    if (error !== undefined) this.#lastError = toBusError(error);
    if (state === 'connected') this.#lastError = undefined;
    return this.#move(state);
  }

  /** What `Transport.health()` returns. */
  health(): TransportHealth {
    const cause = this.cause;
    return cause === undefined
      ? { state: this.#state, since: this.#since }
      : { state: this.#state, since: this.#since, cause, detail: cause.message };
  }

  #move(state: ConnectionState): boolean {
    if (state === this.#state) return false;
    this.#state = state;
    this.#since = this.#now();
    const cause = this.cause;
    const event: TransportEvent =
      cause === undefined ? { kind: 'connection', state } : { kind: 'connection', state, detail: cause.message, cause };
    this.#context?.emit(event);
    this.#onChange?.(state, cause?.message, cause);
    return true;
  }
}

function toBusError(error: string | BusError): BusError {
  return typeof error === 'string' ? new BrokerUnavailableError(error) : error;
}
