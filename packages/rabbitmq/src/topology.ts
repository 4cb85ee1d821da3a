/**
 * The broker objects the transport uses (documented in the README): their names and arguments, and
 * {@link Topology}, which declares (or verifies) them once per connection.
 *
 * - exchange `<topic>` (durable, type `topic`): where an event is published; routing key = topic;
 * - queue `<topic>:<group>`: the group's queue, bound to the exchange with `#`;
 * - queue `<topic>:<group>:delay:<ms>`: one per retry tier, TTL = tier, dead-letters back into the
 *   group's queue through the default exchange;
 * - queue `<topic>:<group>:dlq`: the group's dead letters.
 *
 * `:` cannot occur in an event type, a namespace or a group, so these names never collide.
 */
import {
  AuthenticationError,
  BrokerUnavailableError,
  checkBrokerName,
  describeError,
  TopologyError,
  type TransportCapabilities,
} from '@busbar/core/transport';
import type { Channel } from 'amqplib';
import { closeChannel } from './connection.js';
import type { ResolvedOptions } from './options.js';

/** Broker object names of one (topic, group). */
export interface GroupNames {
  /** The exchange events of `topic` are published to. */
  readonly exchange: string;
  /** The group's queue. */
  readonly queue: string;
  /** The group's dead-letter queue. */
  readonly dlq: string;
  /** The group's delay queue of one tier. */
  delay(tierMs: number): string;
}

/** Names of the objects of `topic` as consumed by `group`. */
export function groupNames(topic: string, group: string): GroupNames {
  const queue = `${topic}:${group}`;
  return { exchange: topic, queue, dlq: `${queue}:dlq`, delay: (tierMs) => `${queue}:delay:${tierMs}` };
}

/** Binding key of every group queue on its exchange (every routing key). */
export const BINDING_KEY = '#';

/** Exchange type of event exchanges. */
export const EXCHANGE_TYPE = 'topic';

type Args = Record<string, string | number>;

function typeArgs(o: ResolvedOptions): Args {
  return { 'x-queue-type': o.queueType };
}

/** Dead-lettering arguments towards `target` through the default exchange. */
function deadLetterTo(target: string, o: ResolvedOptions): Args {
  const args: Args = { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': target };
  if (o.queueType === 'quorum') {
    // At-least-once dead-lettering: the message leaves the source only once the target confirmed
    // it. RabbitMQ requires `reject-publish` overflow on the source for this strategy.
    args['x-dead-letter-strategy'] = 'at-least-once';
    args['x-overflow'] = 'reject-publish';
  }
  return args;
}

/** Arguments of a group queue. */
export function groupQueueArgs(names: GroupNames, o: ResolvedOptions): Args {
  if (o.deliveryLimit === undefined) return typeArgs(o);
  return { ...typeArgs(o), 'x-delivery-limit': o.deliveryLimit, ...deadLetterTo(names.dlq, o) };
}

/** Arguments of a group's dead-letter queue. */
export function dlqArgs(o: ResolvedOptions): Args {
  return typeArgs(o);
}

/** Arguments of a group's delay queue of one tier. */
export function delayQueueArgs(names: GroupNames, tierMs: number, o: ResolvedOptions): Args {
  return { ...typeArgs(o), 'x-message-ttl': tierMs, ...deadLetterTo(names.queue, o) };
}

/** The smallest tier ≥ `delayMs` (the largest tier when none is). */
export function tierFor(delayMs: number, tiers: readonly number[]): number {
  for (const t of tiers) if (t >= delayMs) return t;
  return tiers[tiers.length - 1] as number;
}

/** Broker objects a transport instance declared (for operations tooling and test cleanup). */
export interface DeclaredObjects {
  /** Exchange names. */
  readonly exchanges: readonly string[];
  /** Queue names (group queues, delay queues, dead-letter queues). */
  readonly queues: readonly string[];
}

/** An error that closed a channel or connection (amqplib adds `code`). */
function amqpCode(error: unknown): number | undefined {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'number' ? code : undefined;
}

function topologyError(what: string, error: unknown): Error {
  const code = amqpCode(error);
  if (code === 404) return new TopologyError(`${what} does not exist (topology: 'verify')`, { cause: error });
  if (code === 406) return new TopologyError(`${what} exists with different settings: ${describeError(error)}`, { cause: error });
  if (code === 403)
    return new AuthenticationError(`RabbitMQ refused access to ${what} (permissions of the user): ${describeError(error)}`, {
      cause: error,
    });
  return new BrokerUnavailableError(`could not declare ${what}: ${describeError(error)}`, { cause: error });
}

/**
 * Declares (or, in verify mode, checks) exchanges and queues, and remembers what is ready on the
 * current connection so that each object is declared once per connection. What was declared is
 * forgotten on reconnect and on channel errors (an object deleted under us is declared again).
 *
 * Concurrent requests for one object share one declaration. Not only to save channels: RabbitMQ
 * (seen on 3.10) can answer a second, concurrent `queue.declare` of a new quorum queue before the
 * queue has started, and a publish routed to it right after that answer is nacked — which is how
 * the first retries of a group, declaring the same delay queue at once, failed now and then.
 */
export class Topology {
  /** `e:<exchange>` / `q:<queue>` declared or verified on the current connection. */
  private ready = new Set<string>();
  /** Declarations under way on the current connection, by the same keys. */
  private declaring = new Map<string, Promise<void>>();
  private readonly declaredExchanges = new Set<string>();
  private readonly declaredQueues = new Set<string>();

  /** `channel`: a fresh channel on the live connection (each declaration runs on a short-lived one). */
  constructor(
    private readonly options: ResolvedOptions,
    private readonly caps: Pick<TransportCapabilities, 'maxNameLength' | 'namePattern' | 'maxRetryDelayMs'>,
    private readonly channel: () => Promise<Channel>,
  ) {}

  /** Exchanges and queues declared so far (names only). */
  declaredObjects(): DeclaredObjects {
    return { exchanges: [...this.declaredExchanges], queues: [...this.declaredQueues] };
  }

  /** Forgets everything declared on the current connection: the next use declares again. */
  forgetAll(): void {
    this.ready = new Set();
    this.declaring = new Map();
  }

  /** Whether the exchange of `topic` was declared on the current connection. */
  exchangeReady(topic: string): boolean {
    return this.ready.has(`e:${topic}`);
  }

  /** Runs `fn` on a short-lived channel: a 404/406 closes that channel only. */
  private async withChannel<T>(fn: (ch: Channel) => Promise<T>): Promise<T> {
    const ch = await this.channel();
    try {
      return await fn(ch);
    } finally {
      await closeChannel(ch);
    }
  }

  private checkName(name: string, what: string): string {
    return checkBrokerName(name, this.caps, what);
  }

  /**
   * Runs `declare` for `key` unless it is ready or already being declared (then joins that
   * declaration). Marks `key` ready on success — in the record of the connection it started on, so
   * a declaration that outlives its connection marks nothing on the next one.
   */
  private once(key: string, declare: () => Promise<void>): Promise<void> {
    if (this.ready.has(key)) return Promise.resolve();
    const pending = this.declaring.get(key);
    if (pending !== undefined) return pending;
    const ready = this.ready;
    const declaring = this.declaring;
    const run = declare().then(
      () => {
        ready.add(key);
        if (declaring.get(key) === run) declaring.delete(key);
      },
      (error: unknown) => {
        if (declaring.get(key) === run) declaring.delete(key);
        throw error;
      },
    );
    declaring.set(key, run);
    return run;
  }

  /** Declares (or verifies) the exchange of `topic`. Cached per connection. */
  async ensureExchange(topic: string): Promise<void> {
    const key = `e:${topic}`;
    if (this.ready.has(key)) return;
    this.checkName(topic, 'RabbitMQ exchange name');
    await this.once(key, () =>
      this.withChannel(async (ch) => {
        try {
          if (this.options.topology === 'verify') await ch.checkExchange(topic);
          else {
            await ch.assertExchange(topic, EXCHANGE_TYPE, { durable: true });
            this.declaredExchanges.add(topic);
          }
        } catch (error) {
          throw topologyError(`exchange "${topic}"`, error);
        }
      }),
    );
  }

  /**
   * Declares (or verifies) a queue with `args`. In verify mode the queue must exist
   * (`checkQueue`), and re-asserting it with the expected arguments must not fail with 406.
   */
  private ensureQueue(queue: string, args: Args, bindTo?: string): Promise<void> {
    return this.once(`q:${queue}`, () =>
      this.withChannel(async (ch) => {
        try {
          if (this.options.topology === 'verify') await ch.checkQueue(queue);
          await ch.assertQueue(queue, { durable: true, arguments: args });
          if (this.options.topology === 'declare') this.declaredQueues.add(queue);
        } catch (error) {
          throw topologyError(`queue "${queue}"`, error);
        }
        if (bindTo !== undefined && this.options.topology === 'declare') {
          try {
            await ch.bindQueue(queue, bindTo, BINDING_KEY);
          } catch (error) {
            throw topologyError(`binding of "${queue}" to "${bindTo}"`, error);
          }
        }
      }),
    );
  }

  /** The names of a group, each checked against RabbitMQ's limits. @throws ConfigError */
  groupNamesOf(topic: string, group: string): GroupNames {
    const names = groupNames(topic, group);
    this.checkName(names.exchange, 'RabbitMQ exchange name');
    this.checkName(names.queue, 'RabbitMQ queue name');
    this.checkName(names.dlq, 'RabbitMQ dead-letter queue name');
    this.checkName(names.delay(this.caps.maxRetryDelayMs), 'RabbitMQ delay queue name');
    return names;
  }

  /** Declares the exchange, the group queue (bound) and its dead-letter queue. */
  async ensureGroup(names: GroupNames): Promise<void> {
    await this.ensureExchange(names.exchange);
    // The DLQ first: the group queue dead-letters into it (delivery limit).
    await this.ensureQueue(names.dlq, dlqArgs(this.options));
    await this.ensureQueue(names.queue, groupQueueArgs(names, this.options), names.exchange);
  }

  /** Forgets that a group's objects were declared (they were deleted under us): the next use re-declares. */
  forgetGroup(names: GroupNames): void {
    this.ready.delete(`e:${names.exchange}`);
    this.ready.delete(`q:${names.queue}`);
    this.ready.delete(`q:${names.dlq}`);
  }

  /** Forgets that `queue` was declared: the next use re-declares it. */
  forgetQueue(queue: string): void {
    this.ready.delete(`q:${queue}`);
  }

  /** Declares the group's delay queue of the tier `delayMs` rounds up to, and returns its name. */
  async delayQueue(names: GroupNames, delayMs: number): Promise<string> {
    const tierMs = tierFor(delayMs, this.options.delayTiersMs);
    const queue = names.delay(tierMs);
    await this.ensureQueue(queue, delayQueueArgs(names, tierMs, this.options));
    return queue;
  }
}
