/**
 * The causal order of a subscription's outcomes: a retry copy (same `ce_id`, attempt n+1) can be
 * handed over before core's `retry` of attempt n has resolved — a broker may deliver the copy from
 * a short delay before its writer saw the confirm. Core holds such a copy until that retry
 * settled (and its `retried` outcome was reported), so listeners see `retried` before the next
 * attempt's `delivered`, and a transport needs no hold of its own.
 */
export class RetryHolds {
  /** Retries still settling, by `<ce_id>|<attempt of the copy>`; made on first use. */
  #pending: Map<string, Promise<unknown>> | undefined;

  /** Records that the retry writing attempt `nextAttempt` of message `id` settles with `settled`. */
  retrying(id: string | undefined, nextAttempt: number, settled: Promise<unknown>): void {
    if (id === undefined) return;
    this.#pending ??= new Map();
    const pending = this.#pending;
    const key = `${id}|${nextAttempt}`;
    pending.set(key, settled);
    const forget = () => {
      if (pending.get(key) === settled) pending.delete(key);
    };
    settled.then(forget, forget);
  }

  /**
   * What a delivery of message `id` at `attempt` must wait for before it is processed: the retry
   * that wrote it, while that is still settling; `undefined` otherwise (the common case, checked
   * without building a key).
   */
  holdFor(id: string | undefined, attempt: number): Promise<unknown> | undefined {
    const pending = this.#pending;
    if (attempt < 2 || pending === undefined || pending.size === 0 || id === undefined) return undefined;
    return pending.get(`${id}|${attempt}`);
  }

  /** Retries still settling. */
  get size(): number {
    return this.#pending?.size ?? 0;
  }
}
