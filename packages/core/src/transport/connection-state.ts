import type { ConnectionState, TransportContext, TransportHealth } from '../spi.js';

/** Options of {@link ConnectionStateCell}. */
export interface ConnectionStateCellOptions {
  /** The state before `connect`. @defaultValue 'disconnected' */
  readonly initial?: ConnectionState;
  /** Called after every change of state (after core was told), e.g. to log it. */
  readonly onChange?: (state: ConnectionState, detail: string | undefined) => void;
}

/**
 * The connection state of a transport, and the bookkeeping every transport repeats around it:
 * report each change to core (`TransportContext.emit`) exactly once, remember the last
 * credential-free error, and answer `Transport.health()`.
 *
 * - {@link set} changes the state; only a change is reported. Reaching `'connected'` forgets the
 *   last error.
 * - {@link fail} records an error (credential-free: use `describeError`) without changing state;
 *   `set(state, detail)` does both.
 * - The last error is reported as `detail` — in the `connection` event and in {@link health} —
 *   while the state is anything but `'connected'`.
 *
 * Give it the context in `connect` ({@link attach}); changes before that are kept, not reported.
 */
export class ConnectionStateCell {
  #state: ConnectionState;
  #lastError: string | undefined;
  #context: Pick<TransportContext, 'emit'> | undefined;
  readonly #onChange: ((state: ConnectionState, detail: string | undefined) => void) | undefined;

  constructor(options: ConnectionStateCellOptions = {}) {
    this.#state = options.initial ?? 'disconnected';
    this.#onChange = options.onChange;
  }

  /** The current state. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** The last recorded error, while not connected. */
  get detail(): string | undefined {
    return this.#state === 'connected' ? undefined : this.#lastError;
  }

  /** Reports later changes through `context` (call it first thing in `Transport.connect`). */
  attach(context: Pick<TransportContext, 'emit'>): void {
    this.#context = context;
  }

  /** Records `detail` as the last error without changing state. */
  fail(detail: string): void {
    this.#lastError = detail;
  }

  /**
   * Moves to `state` (recording `detail` as the last error when given). Reports a change to core
   * and to `onChange`; returns whether the state changed.
   */
  set(state: ConnectionState, detail?: string): boolean {
    if (detail !== undefined) this.#lastError = detail;
    if (state === 'connected') this.#lastError = undefined;
    if (state === this.#state) return false;
    this.#state = state;
    const reported = this.detail;
    this.#context?.emit(reported === undefined ? { kind: 'connection', state } : { kind: 'connection', state, detail: reported });
    this.#onChange?.(state, reported);
    return true;
  }

  /** What `Transport.health()` returns. */
  health(): TransportHealth {
    const detail = this.detail;
    return detail === undefined ? { state: this.#state } : { state: this.#state, detail };
  }
}
