import type { BusOptions } from '@busbar/core';
import type { Transport, WireMessage } from '@busbar/core/transport';

/** A separate raw client's view of one destination, opened before the publishes it should see. */
export interface RawProbe {
  /** Resolves with the message whose `ce_id` header is `id`, once the raw client has seen it. */
  waitFor(id: string, timeoutMs: number): Promise<WireMessage>;
  /** Stops observing and removes anything the probe declared. */
  close(): Promise<void>;
}

/** Access to the broker *below* the bus, with the broker's own client. Never a mock. */
export interface RawBrokerClient {
  /**
   * Writes a message (arbitrary headers and bytes, possibly hostile) onto `topic` the way a
   * publisher on the broker would, so every group subscribed to `topic` receives it.
   */
  write(topic: string, message: WireMessage & { key?: string }): Promise<void>;
  /** Starts observing `topic` with a separate connection; sees what is published after it resolves. */
  observe(topic: string): Promise<RawProbe>;
  /** Closes the raw client. */
  close(): Promise<void>;
}

/** What a transport provides to run the conformance suite. */
export interface ConformanceTarget {
  /** Transport name used in test names: `conformance[<name>] …`. */
  readonly name: string;
  /** A new, unconnected transport. Called once per bus; a case may create several buses. */
  createTransport(): Transport;
  /** Creates the raw client (called once per case that needs it). */
  createRawClient(): Promise<RawBrokerClient>;
  /** Deletes every broker object whose name starts with `namespace` (called after each case). */
  cleanup(namespace: string): Promise<void>;
  /** Extra bus options (e.g. shorter timeouts for this broker). */
  readonly busOptions?: Partial<Omit<BusOptions, 'transport'>>;
  /** How long a case waits for deliveries before failing, ms. @defaultValue 20000 */
  readonly deliveryTimeoutMs?: number;
  /** Scale factor for message counts (1 = the full sizes the cases name). @defaultValue 1 */
  readonly scale?: number;
  /** Fault hooks for the fault suite (optional). */
  readonly faults?: {
    restartBroker?(): Promise<void>;
  };
}
