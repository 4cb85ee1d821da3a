/** The messages a raw probe (a plain client beside the bus) has seen, by CloudEvents id. */
import { TimeoutError, type WireMessage } from '@busbar/core';

/** Records what a raw probe reads and lets a test wait for one id. Shared by the transport kits. */
export class ProbeInbox {
  private readonly seen = new Map<string, WireMessage>();
  private readonly waiters = new Map<string, (m: WireMessage) => void>();

  /** @param where names the probe in the timeout error, e.g. `on shop.order` */
  constructor(private readonly where: string) {}

  /** Records a message the probe read (messages without an id are ignored). */
  add(id: string | undefined, message: WireMessage): void {
    if (id === undefined) return;
    this.seen.set(id, message);
    this.waiters.get(id)?.(message);
  }

  /** Resolves with the message once seen; rejects with `TimeoutError` after `timeoutMs`. */
  waitFor(id: string, timeoutMs: number): Promise<WireMessage> {
    const got = this.seen.get(id);
    if (got) return Promise.resolve(got);
    return new Promise<WireMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(id);
        reject(new TimeoutError(`raw probe ${this.where}: ${id} not seen within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.set(id, (m) => {
        clearTimeout(timer);
        this.waiters.delete(id);
        resolve(m);
      });
    });
  }
}
