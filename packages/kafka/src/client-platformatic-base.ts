/**
 * What the `@platformatic/kafka` client files share: the library options built from the client
 * settings (TLS, SASL, retries), the error checks on the library's error chain, and the retry
 * loop for requests right after a topic was created.
 * @internal
 */
import type { BaseOptions, SASLOptions as PltSASLOptions } from '@platformatic/kafka';
import type { SASLOptions } from 'kafkajs';
import { type ClientSettings, errorChain, REJECTED_ERRORS } from './client-common.js';

/** Settings of the `@platformatic/kafka` client (resolved transport options). */
export type PlatformaticClientSettings = ClientSettings;

/** A batch of a group generation that is over (rebalance, restart, close). */
export class StaleBatchError extends Error {
  constructor() {
    super('the consumer group is rebalancing; the batch is stale');
    this.name = 'StaleBatchError';
  }
}

/** Whether the library error (or one of its causes) has one of the Kafka error names `ids`. */
export function hasApiId(error: unknown, ids: ReadonlySet<string> | string): boolean {
  for (const e of errorChain(error)) {
    if (typeof e.apiId !== 'string') continue;
    if (typeof ids === 'string' ? e.apiId === ids : ids.has(e.apiId)) return true;
  }
  return false;
}

/** Whether the broker refused the request (it was not appended; retrying cannot help). */
export function isRejection(error: unknown): boolean {
  return hasApiId(error, REJECTED_ERRORS);
}

/** Retriable errors right after a topic was created (metadata propagates asynchronously on Kafka 4). */
export async function retrying<T>(fn: () => Promise<T>, attempts = 8): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await fn();
    } catch (error) {
      const retriable = [...errorChain(error)].some((e) => e.canRetry === true || e.apiId === 'UNKNOWN_TOPIC_OR_PARTITION');
      if (!retriable || n >= attempts) throw error;
      await delay(Math.min(1000, 50 * 2 ** n));
    }
  }
}

/** Resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function saslOf(sasl: SASLOptions): PltSASLOptions {
  const s = sasl as unknown as Record<string, unknown>;
  const mechanism = String(s.mechanism).toUpperCase();
  if (mechanism === 'OAUTHBEARER') {
    const provider = s.oauthBearerProvider as (() => Promise<{ value: string }>) | undefined;
    return { mechanism: 'OAUTHBEARER', token: async () => (provider ? (await provider()).value : '') } as unknown as PltSASLOptions;
  }
  if (mechanism !== 'PLAIN' && mechanism !== 'SCRAM-SHA-256' && mechanism !== 'SCRAM-SHA-512')
    throw new Error(`SASL mechanism ${mechanism} is not supported by the platformatic client`);
  return { mechanism, username: s.username as string, password: s.password as string } as PltSASLOptions;
}

/** The library options every client object (admin, producer, consumer) is built with. */
export function baseOptions(s: PlatformaticClientSettings): BaseOptions {
  const o: BaseOptions = {
    clientId: s.clientId,
    bootstrapBrokers: [...s.brokers],
    connectTimeout: s.socketConnectTimeoutMs,
    requestTimeout: s.requestTimeoutMs,
    retries: s.requestRetries,
    retryDelay: (_client, _op, attempt) => Math.min(s.maxRetryTimeMs, 100 * 2 ** Math.max(0, attempt - 1)),
    autocreateTopics: false,
  };
  if (s.ssl !== undefined && s.ssl !== false) o.tls = (s.ssl === true ? {} : s.ssl) as BaseOptions['tls'];
  if (s.sasl !== undefined) o.sasl = saslOf(s.sasl);
  return o;
}

/** A request timed out: the connection it used is presumed dead (half-open, black-holed). */
export function isRequestTimeout(error: unknown): boolean {
  return [...errorChain(error)].some((e) => e.name === 'TimeoutError' || e.message === 'Request timed out');
}
