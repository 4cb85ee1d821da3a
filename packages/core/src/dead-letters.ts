/**
 * Dead letters as the application sees them: the view of a stored dead letter, and the queue of
 * one (event, group) to list and replay — over `Transport.processDeadLetters`.
 */

import { brokerDeadLetterMetadata, replayHeaders } from './delivery/copy-headers.js';
import { messageIdOf } from './delivery/decode.js';
import type { DeadLetterReason, DeadLetterReasonKind } from './envelope.js';
import { HeaderNames as Headers } from './headers.js';
import { checkNumber, checkObject, checkType } from './option-checks.js';
import type { DeadLetterTarget, StoredDeadLetter, Transport } from './spi.js';

/** A dead letter as read back through {@link DeadLetterQueue}. */
export interface DeadLetterView {
  /** Original message id. */
  readonly id: string;
  /** Why it was dead-lettered. */
  readonly reason: DeadLetterReason;
  /** Credential-free error description. */
  readonly error: string;
  /** Attempts made. */
  readonly attempts: number;
  /** RFC 3339 times. */
  readonly firstFailure: string;
  readonly lastFailure: string;
  /** Original destination and position. */
  readonly origin: string;
  readonly position: string;
  /** Group that failed. */
  readonly group: string;
  /** All headers as stored. */
  readonly headers: Readonly<Record<string, string>>;
  /** The original body, byte-for-byte. */
  readonly body: Uint8Array;
  /** Broker handle. */
  readonly handle: string;
}

/** Options of {@link DeadLetterQueue.replay}. */
export interface ReplayOptions {
  /** Only dead letters this accepts are replayed. @defaultValue all */
  filter?: (deadLetter: DeadLetterView) => boolean;
  /** Replay at most this many. @defaultValue 1000 */
  limit?: number;
  /** Report what would be replayed; change nothing. @defaultValue false */
  dryRun?: boolean;
}

/** Dead letters of one event and group. */
export interface DeadLetterQueue {
  /** Reads up to `limit` dead letters (oldest first) without changing them. */
  list(options?: { limit?: number }): Promise<DeadLetterView[]>;
  /** Re-delivers the selected dead letters to their group only, attempt count reset. */
  replay(options?: ReplayOptions): Promise<DeadLetterView[]>;
}

const REASON_KINDS: ReadonlySet<string> = new Set<DeadLetterReasonKind>([
  'max-attempts',
  'non-retryable',
  'handler-requested',
  'schema-invalid',
  'undecodable',
  'invalid-envelope',
  'payload-too-large',
  'unsupported-version',
  'upcast-failed',
  'broker-dead-lettered',
]);

/**
 * The view of a stored dead letter. A message the broker dead-lettered by itself gets the metadata
 * core builds from the broker's facts (reason `'broker-dead-lettered'`); a reason this version
 * does not know is reported as `'unknown'`.
 */
export function toDeadLetterView(stored: StoredDeadLetter, target: DeadLetterTarget, transport: string, nowMs: number): DeadLetterView {
  const broker = stored.brokerDeadLettered;
  const h = broker ? { ...stored.headers, ...brokerDeadLetterMetadata(stored.headers, broker, target, transport, nowMs) } : stored.headers;
  const kind = h[Headers.deadLetterReason] ?? '';
  const error = h[Headers.deadLetterError] ?? '';
  return {
    id: messageIdOf(stored) ?? '',
    reason: (REASON_KINDS.has(kind)
      ? { kind, detail: error }
      : { kind: 'unknown', detail: `unknown reason "${kind}": ${error}` }) as DeadLetterReason,
    error,
    attempts: Number(h[Headers.deadLetterAttempts] ?? 0),
    firstFailure: h[Headers.deadLetterFirstFailure] ?? '',
    lastFailure: h[Headers.deadLetterLastFailure] ?? '',
    origin: h[Headers.deadLetterOrigin] ?? '',
    position: h[Headers.deadLetterPosition] ?? '',
    group: h[Headers.deadLetterGroup] ?? '',
    headers: h,
    body: stored.body,
    handle: stored.handle,
  };
}

/** What {@link deadLetterQueue} needs from its bus. */
export interface DeadLetterSource {
  readonly transport: Transport;
  /** Resolves once the transport connected. */
  readonly connected: () => Promise<void>;
  /** Now, epoch ms (the time of a broker-dead-lettered message that has none of its own). */
  readonly now: () => number;
}

/** The dead letters of `target` (topic and group already validated), to list and replay. */
export function deadLetterQueue(source: DeadLetterSource, target: DeadLetterTarget): DeadLetterQueue {
  const scan = async (options: ReplayOptions, dryRun: boolean): Promise<DeadLetterView[]> => {
    checkObject(options as unknown, 'replay options');
    checkNumber(options.limit, 'options.limit', { integer: true, min: 1 });
    checkType(options.filter, 'options.filter', 'function');
    checkType(options.dryRun, 'options.dryRun', 'boolean');
    const chosen: DeadLetterView[] = [];
    const limit = options.limit ?? 1000;
    await source.connected();
    const now = source.now();
    await source.transport.processDeadLetters(target, {
      limit,
      dryRun,
      select: (stored) => {
        const view = toDeadLetterView(stored, target, source.transport.name, now);
        if (options.filter && !options.filter(view)) return undefined;
        chosen.push(view);
        return replayHeaders(stored.headers);
      },
    });
    return chosen;
  };
  return {
    list: async (o = {}) => {
      checkObject(o as unknown, 'list options');
      return scan({ limit: o.limit ?? 1000 }, true);
    },
    replay: (o = {}) => scan(o, o.dryRun ?? false),
  };
}
