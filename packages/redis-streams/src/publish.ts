/**
 * The publish path: a batch becomes one `APPEND` script per stream (an `XADD` per message inside
 * Redis), a lone message one `XADD`; each message resolves on its own reply.
 */

import { PublishTimeoutError } from '@busbar/core';
import {
  BrokerUnavailableError,
  checkBrokerName,
  type OutgoingMessage,
  type PublishOutcome,
  PublishRejectedError,
  type TransportCapabilities,
} from '@busbar/core/transport';
import { type Redis, ReplyError } from 'ioredis';
import { type Connections, isRefusal, messageOf, scrub } from './connection.js';
import { APPEND } from './scripts.js';
import { streamKey } from './topology.js';
import { BODY_FIELD, encodeBody, encodeHeaders, HEADERS_FIELD } from './wire.js';

/** Redis errors a later attempt may get past (the server is loading, read-only, out of memory …). */
const TRANSIENT = /^(OOM|LOADING|READONLY|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|NOREPLICAS)/;

/** Most messages appended by one `APPEND` script (it blocks Redis while it runs). */
const APPEND_MAX = 500;

/** Options of the publish's abort listener (one object for every publish). */
const ONCE = Object.freeze({ once: true } as const);

/** The outcome of every message that was appended (shared: it carries nothing of its own). */
const PUBLISHED: PublishOutcome = Object.freeze({ ok: true });

/**
 * The outcome of a message whose `XADD` failed. Only a reply of the server can reject a message
 * (`NOPERM`: `AuthenticationError`); anything else (ioredis's "Stream isn't writeable",
 * "Connection is closed" while a dead link is dropped …) is the link's fault: a retryable
 * `BrokerUnavailableError` naming the endpoint and the cause.
 */
function failedXadd(connections: Connections, m: OutgoingMessage, error: unknown): PublishOutcome {
  const doing = `XADD of ${m.id} to ${m.topic}`;
  if (error instanceof ReplyError && !TRANSIENT.test((error as Error).message) && !isRefusal(error)) {
    return { ok: false, error: new PublishRejectedError(`${doing} failed: ${messageOf(error)}`, { cause: scrub(error) }) };
  }
  return { ok: false, error: connections.toBusError(error, doing) };
}

/** @internal Appends batches to the event streams on the command connection. */
export class Publisher {
  private readonly streamKeys = new Map<string, string>();

  /** Publishes waiting for their replies: failed at once when the link is found dead. */
  private readonly waiting = new Set<(why: string) => void>();

  /**
   * The command connection was found silent and dropped: every publish still waiting for its reply
   * fails now with `PublishTimeoutError` (outcome unknown: the message may have landed, and ioredis
   * re-sends the command after the reconnect) instead of at its own timeout.
   */
  linkLost(why: string): void {
    const waiting = [...this.waiting];
    this.waiting.clear();
    for (const fail of waiting) fail(why);
  }

  constructor(
    private readonly connections: Connections,
    private readonly keyPrefix: string,
    private readonly capabilities: TransportCapabilities,
  ) {}

  /** The stream key of `topic` (validated once per topic). */
  private streamOf(topic: string): string {
    let key = this.streamKeys.get(topic);
    if (key === undefined) {
      key = streamKey(this.keyPrefix, checkBrokerName(topic, this.capabilities, 'topic'));
      if (this.streamKeys.size >= 10_000) this.streamKeys.clear();
      this.streamKeys.set(topic, key);
    }
    return key;
  }

  /**
   * Appends the batch: per stream, one `XADD` for a lone message, else one `APPEND` script per 500
   * messages (an `XADD` each inside Redis); each message resolves on its own reply.
   * `BrokerUnavailableError` while disconnected.
   */
  publish(batch: readonly OutgoingMessage[], signal: AbortSignal): Promise<readonly PublishOutcome[]> {
    if (signal.aborted) return Promise.reject(new BrokerUnavailableError('publish aborted before it was sent'));
    let client: Redis;
    try {
      client = this.connections.ready();
    } catch (error) {
      return Promise.reject(error);
    }
    const outcomes: PublishOutcome[] = new Array(batch.length);
    let appended: Promise<void>;
    const lone = batch.length === 1 ? batch[0] : undefined;
    if (lone !== undefined) {
      appended = this.appendOne(client, lone, 0, outcomes);
    } else {
      const all: Promise<void>[] = [];
      for (const [key, indexes] of this.byStream(batch)) {
        for (let from = 0; from < indexes.length; from += APPEND_MAX) {
          const chunk = indexes.length <= APPEND_MAX ? indexes : indexes.slice(from, from + APPEND_MAX);
          all.push(this.append(client, key, batch, chunk, outcomes));
        }
      }
      appended = all.length === 1 ? (all[0] as Promise<void>) : Promise.all(all).then(() => undefined);
    }
    // `append` never rejects (it records failures as outcomes): only the signal, or the link found
    // dead, can end the wait early.
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.waiting.delete(onDead);
        reject(new BrokerUnavailableError(`publish aborted while waiting for redis at ${this.connections.endpoint}`));
        // A publish that outlived its deadline may sit on a dead (half-open) link: check it.
        void this.connections.probe('after a publish timed out');
      };
      const onDead = (why: string) => {
        signal.removeEventListener('abort', onAbort);
        reject(
          new PublishTimeoutError(
            `the link to redis at ${this.connections.endpoint} went silent while this publish waited for its reply (${why}); its outcome is unknown`,
          ),
        );
      };
      signal.addEventListener('abort', onAbort, ONCE);
      this.waiting.add(onDead);
      appended.then(
        () => {
          signal.removeEventListener('abort', onAbort);
          this.waiting.delete(onDead);
          resolve(outcomes);
        },
        (error: unknown) => {
          signal.removeEventListener('abort', onAbort);
          this.waiting.delete(onDead);
          reject(error);
        },
      );
    });
  }

  /** Appends the lone message `m` (index `i`) with a plain `XADD` and records its outcome. */
  private async appendOne(client: Redis, m: OutgoingMessage, i: number, outcomes: PublishOutcome[]): Promise<void> {
    const key = this.streamOf(m.topic); // an invalid topic rejects the publish, as for a batch
    try {
      await client.xadd(key, '*', HEADERS_FIELD, encodeHeaders(m.headers), BODY_FIELD, encodeBody(m.body));
      outcomes[i] = PUBLISHED;
    } catch (error) {
      outcomes[i] = failedXadd(this.connections, m, error);
    }
  }

  /** The batch's message indexes by stream key, in batch order (one stream: no grouping work). */
  private byStream(batch: readonly OutgoingMessage[]): Map<string, number[]> {
    const groups = new Map<string, number[]>();
    const first = batch[0];
    if (first === undefined) return groups;
    if (batch.every((m) => m.topic === first.topic)) {
      groups.set(
        this.streamOf(first.topic),
        Array.from({ length: batch.length }, (_, i) => i),
      );
      return groups;
    }
    batch.forEach((m, i) => {
      const key = this.streamOf(m.topic);
      const indexes = groups.get(key);
      if (indexes) indexes.push(i);
      else groups.set(key, [i]);
    });
    return groups;
  }

  /**
   * Appends the messages `indexes` of `batch` to stream `key` and records their outcomes: a failure
   * of the whole command fails each of them.
   */
  private async append(
    client: Redis,
    key: string,
    batch: readonly OutgoingMessage[],
    indexes: readonly number[],
    outcomes: PublishOutcome[],
  ): Promise<void> {
    if (indexes.length === 1) return this.appendOne(client, batch[indexes[0] as number] as OutgoingMessage, indexes[0] as number, outcomes);
    try {
      const args: (string | Buffer)[] = new Array(indexes.length * 2);
      for (let j = 0; j < indexes.length; j++) {
        const m = batch[indexes[j] as number] as OutgoingMessage;
        args[2 * j] = encodeHeaders(m.headers);
        args[2 * j + 1] = encodeBody(m.body);
      }
      const replies = await APPEND.run(client, [key], args);
      if (!Array.isArray(replies) || replies.length !== indexes.length) {
        throw new BrokerUnavailableError(
          `unexpected reply of redis at ${this.connections.endpoint} to an append of ${indexes.length} messages`,
        );
      }
      for (let j = 0; j < indexes.length; j++) {
        const i = indexes[j] as number;
        const reply: unknown = replies[j];
        outcomes[i] = reply instanceof Error ? failedXadd(this.connections, batch[i] as OutgoingMessage, reply) : PUBLISHED;
      }
    } catch (error) {
      for (const i of indexes) outcomes[i] = failedXadd(this.connections, batch[i] as OutgoingMessage, error);
    }
  }
}
