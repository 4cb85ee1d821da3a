import {
  BrokerUnavailableError,
  backoffDelay,
  ConfigError,
  type ConnectionState,
  checkBrokerName,
  DEAD_LETTER_HEADERS,
  type DeadLetterScan,
  type DeadLetterTarget,
  type Delivery,
  describeError,
  Headers,
  type Logger,
  type OutgoingMessage,
  type PublishOutcome,
  PublishRejectedError,
  type StoredDeadLetter,
  type SubscriptionSpec,
  silentLogger,
  TopologyError,
  type Transport,
  type TransportCapabilities,
  type TransportContext,
  type TransportHealth,
  type TransportSubscription,
} from '@busbar/core';
import { type Channel, type ChannelModel, type ConfirmChannel, type ConsumeMessage, connect, type Message, type Options } from 'amqplib';
import { AckWindow, ConfirmBatch, type WriteCoalescer, writesOf } from './flow.js';
import { type RabbitMqOptions, type ResolvedOptions, resolveOptions } from './options.js';
import { BINDING_KEY, delayQueueArgs, dlqArgs, EXCHANGE_TYPE, type GroupNames, groupNames, groupQueueArgs, tierFor } from './topology.js';
import { deliveryCount, fromAmqp, headerAttempt, PublishHeaderTables } from './wire.js';

/** Broker objects a transport instance declared (for operations tooling and test cleanup). */
export interface DeclaredObjects {
  /** Exchange names. */
  readonly exchanges: readonly string[];
  /** Queue names (group queues, delay queues, dead-letter queues). */
  readonly queues: readonly string[];
}

/** RabbitMQ names: up to 255 bytes; we never derive names starting with the reserved `amq.`. */
const NAME_PATTERN = /^(?!amq\.)[A-Za-z0-9._:-]+$/;

/**
 * Publish calls core may keep in flight (`capabilities.orderedPublishCalls`): every call writes on
 * the one confirm channel, in call order (see `publish`), and RabbitMQ handles a channel's frames
 * in the order written, so overlapping calls keep publish order. 16 lets a steady flow of publishes
 * go out while earlier ones await their confirms (each call is a synchronous run's publishes, or
 * what queued while all 16 were busy).
 */
const ORDERED_PUBLISH_CALLS = 16;

/** The confirm channel publishes go through, and what the transport tracks about it. */
interface PublishLink {
  readonly ch: ConfirmChannel;
  /**
   * Messages RabbitMQ returned (unroutable) whose confirm has not arrived yet, counted by
   * {@link returnKey}. RabbitMQ sends `basic.return` before the message's `basic.ack`, so the
   * confirm callback finds its return here; with nothing returned (the normal case) the callback
   * checks only that this map is empty.
   */
  readonly returned: Map<string, number>;
  /** Socket write coalescing of the connection the channel belongs to. */
  readonly writes: WriteCoalescer;
}

function returnKey(exchange: string, routingKey: string, messageId: unknown): string {
  return `${exchange}\u0000${routingKey}\u0000${typeof messageId === 'string' ? messageId : ''}`;
}

/** Consumes one recorded return of `key`; false if there is none. */
function takeReturn(returned: Map<string, number>, key: string): boolean {
  const n = returned.get(key);
  if (n === undefined) return false;
  if (n <= 1) returned.delete(key);
  else returned.set(key, n - 1);
  return true;
}

function where(exchange: string, routingKey: string): string {
  return exchange === '' ? `queue "${routingKey}"` : `exchange "${exchange}"`;
}

function unroutable(exchange: string, routingKey: string): PublishRejectedError {
  return exchange === ''
    ? new PublishRejectedError(`${where(exchange, routingKey)} does not exist; RabbitMQ returned the message unroutable`)
    : new PublishRejectedError(
        `no queue is bound to ${where(exchange, routingKey)}; RabbitMQ returned the message unroutable (subscribe a group first)`,
      );
}

/** An error that closed a channel or connection (amqplib adds `code`). */
function amqpCode(error: unknown): number | undefined {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'number' ? code : undefined;
}

/** Rejects with `onAbort()` when `signal` aborts first. */
function raceSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined, onAbort: () => Error): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(onAbort());
  return new Promise<T>((resolve, reject) => {
    const abort = () => reject(onAbort());
    signal.addEventListener('abort', abort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', abort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', abort);
        reject(e);
      },
    );
  });
}

/**
 * Busbar transport for RabbitMQ (AMQP 0-9-1, amqplib). See the package README for the topology,
 * the guarantees and what survives a broker restart.
 *
 * - `publish` writes persistent messages with `mandatory` on one confirm channel: a batch is
 *   written into the confirm window at once (in few socket writes) and each message gets its own
 *   outcome from its ack/nack; an unroutable message (no queue bound) fails with
 *   `PublishRejectedError`.
 * - Each subscription consumes its group queue on its own channel with prefetch = concurrency and
 *   acknowledges after core settled the delivery; the acks of one event-loop turn are coalesced
 *   (see `AckWindow`).
 * - Retries go through per-group delay queues (fixed tiers, TTL + dead-lettering back into the group
 *   queue), dead letters into a per-group dead-letter queue; both are written with confirms before
 *   the original is acknowledged.
 * - The connection is re-established with backoff + jitter; subscriptions resume by themselves.
 */
export class RabbitMqTransport implements Transport {
  /** @inheritDoc */
  readonly name = 'rabbitmq';
  /** @inheritDoc */
  readonly capabilities: TransportCapabilities;
  private readonly options: ResolvedOptions;
  private logger: Logger = silentLogger;
  private context: TransportContext | undefined;
  private connection: ChannelModel | undefined;
  private state: ConnectionState = 'disconnected';
  private lastError: string | undefined;
  private closing = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectAttempt = 0;
  private connectWaiters = new Set<() => void>();
  private publishChannel: Promise<PublishLink> | undefined;
  /** The publish channel once open (saves an await per publish call). */
  private publishLink: PublishLink | undefined;
  /** Publish options and header tables reused from message to message (see {@link write}). */
  private readonly publishProps: Options.Publish = {
    persistent: true,
    mandatory: true,
    headers: undefined,
    contentType: undefined,
    messageId: undefined,
    timestamp: undefined,
  };
  private readonly headerTables = new PublishHeaderTables();
  /**
   * Set while a publish call writes after having waited (see {@link inWriteOrder}): later calls
   * write after it, so overlapping calls keep their order on the channel.
   */
  private writing: Promise<void> | undefined;
  /** Objects declared/verified on the current connection (cleared on reconnect and channel errors). */
  private ready = new Set<string>();
  private readonly declaredExchanges = new Set<string>();
  private readonly declaredQueues = new Set<string>();
  private readonly subscriptions = new Set<RabbitSubscription>();

  constructor(options: RabbitMqOptions = {}) {
    this.options = resolveOptions(options);
    this.capabilities = {
      durability: 'disk',
      orderedByKey: false,
      newGroupFromEarliest: false,
      balancedAssignment: true,
      leaseExtension: false,
      maxRetryDelayMs: this.options.delayTiersMs[this.options.delayTiersMs.length - 1] as number,
      orderedPublishCalls: ORDERED_PUBLISH_CALLS,
      maxNameLength: 255,
      namePattern: NAME_PATTERN,
    };
  }

  /** Exchanges and queues this instance declared so far (names only). */
  declaredObjects(): DeclaredObjects {
    return { exchanges: [...this.declaredExchanges], queues: [...this.declaredQueues] };
  }

  /** @inheritDoc */
  async connect(context: TransportContext): Promise<void> {
    if (this.context) throw new ConfigError('RabbitMqTransport.connect was called twice; one instance belongs to one bus');
    this.context = context;
    this.logger = context.logger;
    this.setState('connecting');
    try {
      await this.open();
    } catch (error) {
      this.logger.warn({ err: describeError(error), url: this.options.safeUrl }, 'RabbitMQ unreachable; reconnecting in the background');
      this.lastError = describeError(error);
      this.setState('reconnecting', this.lastError);
      this.scheduleReconnect();
    }
  }

  /** @inheritDoc */
  health(): TransportHealth {
    return this.lastError === undefined || this.state === 'connected'
      ? { state: this.state }
      : { state: this.state, detail: this.lastError };
  }

  // ---------------------------------------------------------------------------------------------
  // Connection

  private setState(state: ConnectionState, detail?: string): void {
    if (this.state === state) return;
    this.state = state;
    this.context?.emit(detail === undefined ? { kind: 'connection', state } : { kind: 'connection', state, detail });
  }

  private async open(): Promise<void> {
    const conn = await connect(this.options.url, this.options.socketOptions);
    if (this.closing) {
      await conn.close().catch(() => {});
      return;
    }
    conn.on('error', (error: unknown) => {
      this.logger.warn({ err: describeError(error) }, 'RabbitMQ connection error');
    });
    conn.on('close', (error?: unknown) => this.onConnectionClosed(conn, error));
    conn.on('blocked', (reason: unknown) =>
      this.logger.warn({ reason: String(reason) }, 'RabbitMQ blocked the connection (resource alarm)'),
    );
    conn.on('unblocked', () => this.logger.info({}, 'RabbitMQ unblocked the connection'));
    this.connection = conn;
    this.ready = new Set();
    this.reconnectAttempt = 0;
    this.lastError = undefined;
    this.setState('connected');
    this.logger.info({ url: this.options.safeUrl }, 'connected to RabbitMQ');
    for (const w of this.connectWaiters) w();
    this.connectWaiters.clear();
    for (const sub of this.subscriptions) sub.resume(0);
  }

  private onConnectionClosed(conn: ChannelModel, error: unknown): void {
    if (this.connection !== conn) return;
    this.connection = undefined;
    this.publishChannel = undefined;
    this.publishLink = undefined;
    this.ready = new Set();
    if (this.closing) return;
    this.lastError = error ? describeError(error) : 'connection closed';
    this.logger.warn({ err: this.lastError }, 'RabbitMQ connection lost; reconnecting');
    this.setState('reconnecting', this.lastError);
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closing || this.reconnectTimer) return;
    this.reconnectAttempt++;
    const delay = backoffDelay(this.reconnectAttempt, this.options.backoff);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.closing) return;
      this.open().catch((error: unknown) => {
        this.lastError = describeError(error);
        this.logger.warn({ err: this.lastError, attempt: this.reconnectAttempt }, 'RabbitMQ reconnect failed');
        if (this.reconnectAttempt >= 3) this.setState('disconnected', this.lastError);
        this.scheduleReconnect();
      });
    }, delay);
  }

  /** The live connection, waiting for a reconnect up to `waitForConnectionMs` (and `signal`). */
  private async live(signal?: AbortSignal): Promise<ChannelModel> {
    if (this.closing) throw new BrokerUnavailableError('the RabbitMQ transport is closed');
    if (this.connection) return this.connection;
    const waitMs = this.options.waitForConnectionMs;
    const unavailable = () =>
      new BrokerUnavailableError(`RabbitMQ at ${this.options.safeUrl} is not connected${this.lastError ? ` (${this.lastError})` : ''}`);
    if (waitMs === 0) throw unavailable();
    let done!: () => void;
    let timer: NodeJS.Timeout | undefined;
    const wait = new Promise<void>((resolve, reject) => {
      done = resolve;
      timer = setTimeout(() => reject(unavailable()), waitMs);
      this.connectWaiters.add(done);
    });
    try {
      await raceSignal(wait, signal, unavailable);
    } finally {
      clearTimeout(timer);
      this.connectWaiters.delete(done);
    }
    if (!this.connection || this.closing) throw unavailable();
    return this.connection;
  }

  /** Creates a channel on the live connection with error listeners (a channel error never crashes). */
  async channel(signal?: AbortSignal): Promise<Channel> {
    const conn = await this.live(signal);
    const ch = await conn.createChannel();
    ch.on('error', (error: unknown) => this.logger.warn({ err: describeError(error) }, 'RabbitMQ channel error'));
    return ch;
  }

  // ---------------------------------------------------------------------------------------------
  // Topology

  /** Runs `fn` on a short-lived channel: a 404/406 closes that channel only. */
  private async withTopologyChannel<T>(fn: (ch: Channel) => Promise<T>): Promise<T> {
    const ch = await this.channel();
    try {
      return await fn(ch);
    } finally {
      await ch.close().catch(() => {});
    }
  }

  private topologyError(what: string, error: unknown): Error {
    const code = amqpCode(error);
    if (code === 404) return new TopologyError(`${what} does not exist (topology: 'verify')`, { cause: error });
    if (code === 406) return new TopologyError(`${what} exists with different settings: ${describeError(error)}`, { cause: error });
    if (code === 403) return new TopologyError(`${what}: access refused: ${describeError(error)}`, { cause: error });
    return new BrokerUnavailableError(`could not declare ${what}: ${describeError(error)}`, { cause: error });
  }

  private checkName(name: string, what: string): string {
    return checkBrokerName(name, this.capabilities, what);
  }

  /** Declares (or verifies) the exchange of `topic`. Cached per connection. */
  async ensureExchange(topic: string): Promise<void> {
    const key = `e:${topic}`;
    if (this.ready.has(key)) return;
    this.checkName(topic, 'RabbitMQ exchange name');
    await this.withTopologyChannel(async (ch) => {
      try {
        if (this.options.topology === 'verify') await ch.checkExchange(topic);
        else {
          await ch.assertExchange(topic, EXCHANGE_TYPE, { durable: true });
          this.declaredExchanges.add(topic);
        }
      } catch (error) {
        throw this.topologyError(`exchange "${topic}"`, error);
      }
    });
    this.ready.add(key);
  }

  /**
   * Declares (or verifies) a queue with `args`. In verify mode the queue must exist
   * (`checkQueue`), and re-asserting it with the expected arguments must not fail with 406.
   */
  async ensureQueue(queue: string, args: Record<string, string | number>, bindTo?: string): Promise<void> {
    const key = `q:${queue}`;
    if (this.ready.has(key)) return;
    await this.withTopologyChannel(async (ch) => {
      try {
        if (this.options.topology === 'verify') await ch.checkQueue(queue);
        await ch.assertQueue(queue, { durable: true, arguments: args });
        if (this.options.topology === 'declare') this.declaredQueues.add(queue);
      } catch (error) {
        throw this.topologyError(`queue "${queue}"`, error);
      }
      if (bindTo !== undefined && this.options.topology === 'declare') {
        try {
          await ch.bindQueue(queue, bindTo, BINDING_KEY);
        } catch (error) {
          throw this.topologyError(`binding of "${queue}" to "${bindTo}"`, error);
        }
      }
    });
    this.ready.add(key);
  }

  /** Checks every name of a group against RabbitMQ's limits. */
  groupNamesOf(topic: string, group: string): GroupNames {
    const names = groupNames(topic, group);
    this.checkName(names.exchange, 'RabbitMQ exchange name');
    this.checkName(names.queue, 'RabbitMQ queue name');
    this.checkName(names.dlq, 'RabbitMQ dead-letter queue name');
    this.checkName(names.delay(this.capabilities.maxRetryDelayMs), 'RabbitMQ delay queue name');
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

  /** Declares the delay queue of `tierMs` of a group and returns its name. */
  async ensureDelayQueue(names: GroupNames, tierMs: number): Promise<string> {
    const queue = names.delay(tierMs);
    await this.ensureQueue(queue, delayQueueArgs(names, tierMs, this.options));
    return queue;
  }

  // ---------------------------------------------------------------------------------------------
  // Publishing

  private getPublishChannel(signal?: AbortSignal): Promise<PublishLink> {
    if (this.publishChannel) return this.publishChannel;
    const created = (async () => {
      const conn = await this.live(signal);
      const ch = await conn.createConfirmChannel();
      const link: PublishLink = { ch, returned: new Map(), writes: writesOf(conn) };
      ch.on('error', (error: unknown) => {
        this.logger.warn({ err: describeError(error) }, 'RabbitMQ publish channel error');
        // A 404 (exchange or queue deleted under us) invalidates what we believed declared.
        this.ready = new Set();
      });
      ch.on('close', () => {
        // amqplib has failed every unconfirmed message by now ('channel closed').
        link.returned.clear();
        if (this.publishChannel === created) {
          this.publishChannel = undefined;
          this.publishLink = undefined;
        }
      });
      ch.on('return', (msg: Message) => {
        const key = returnKey(msg.fields.exchange, msg.fields.routingKey, msg.properties.messageId);
        link.returned.set(key, (link.returned.get(key) ?? 0) + 1);
      });
      return link;
    })();
    this.publishChannel = created;
    created.then(
      (link) => {
        if (this.publishChannel === created) this.publishLink = link;
      },
      () => {
        if (this.publishChannel === created) this.publishChannel = undefined;
      },
    );
    return created;
  }

  /**
   * Writes one message on the confirm channel; its outcome lands in `confirms[i]`: ok on the
   * broker's ack, `PublishRejectedError` on nack or return (unroutable), `BrokerUnavailableError`
   * when the channel closed before the confirm (outcome unknown) or the write failed. Returns false
   * when the channel's buffer is full: wait for its `drain` before writing more.
   */
  private write(
    link: PublishLink,
    exchange: string,
    routingKey: string,
    body: Uint8Array,
    headers: Readonly<Record<string, string>>,
    timestamp: number,
    confirms: ConfirmBatch,
    i: number,
  ): boolean {
    // Reused options and headers table: amqplib reads them synchronously within `publish` (see
    // PublishHeaderTables), so each message overwrites what the previous one used.
    const tables = this.headerTables;
    const props = this.publishProps;
    props.headers = tables.map(headers);
    props.contentType = tables.contentType;
    const messageId = tables.messageId;
    props.messageId = messageId;
    props.timestamp = timestamp;
    const content = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    try {
      return link.ch.publish(exchange, routingKey, content, props, (err: unknown) => {
        if (err === null || err === undefined) {
          if (link.returned.size === 0 || !takeReturn(link.returned, returnKey(exchange, routingKey, messageId))) confirms.ok(i);
          else confirms.fail(i, unroutable(exchange, routingKey));
        } else if (err instanceof Error && err.message === 'message nacked') {
          confirms.fail(i, new PublishRejectedError(`RabbitMQ nacked the message on ${where(exchange, routingKey)} (a queue refused it)`));
        } else {
          confirms.fail(
            i,
            new BrokerUnavailableError(
              `the channel closed before RabbitMQ confirmed the message on ${where(exchange, routingKey)}; outcome unknown`,
              { cause: err },
            ),
          );
        }
      });
    } catch (error) {
      // amqplib registers the confirm callback only after a successful write.
      confirms.fail(
        i,
        error instanceof RangeError
          ? new PublishRejectedError(`message could not be encoded: ${describeError(error)}`, { cause: error })
          : new BrokerUnavailableError(`publish on ${where(exchange, routingKey)} failed: ${describeError(error)}`, { cause: error }),
      );
      return true;
    }
  }

  /** Resolves once `ch` can take more writes (or closed). */
  private drained(ch: ConfirmChannel): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        ch.off('drain', done).off('close', done);
        resolve();
      };
      ch.on('drain', done).on('close', done);
    });
  }

  /**
   * Publishes a copy written by the transport itself (retry, dead letter, replay, release) straight
   * into `queue` through the default exchange, and waits for the broker's confirm.
   */
  async sendToQueue(queue: string, body: Uint8Array, headers: Readonly<Record<string, string>>): Promise<void> {
    const link = await this.getPublishChannel();
    const confirms = new ConfirmBatch(1);
    const written = this.write(link, '', queue, body, headers, Math.floor(Date.now() / 1000), confirms, 0);
    if (!written) await this.drained(link.ch);
    const [outcome] = await confirms.done;
    if (outcome && !outcome.ok) throw outcome.error;
  }

  /**
   * @inheritDoc
   *
   * Calls may overlap (`capabilities.orderedPublishCalls`): the messages of a call are written to
   * the channel after those of every earlier call, so RabbitMQ appends them in call order. A call
   * that can write at once (channel open, exchanges declared, no earlier call still writing)
   * writes synchronously; one that has to wait first (for the channel, a declaration, or the
   * channel's buffer to drain) makes every later call wait until it has written.
   */
  async publish(
    batch: readonly OutgoingMessage[],
    signal: AbortSignal,
    onDurable?: (index: number) => void,
  ): Promise<readonly PublishOutcome[]> {
    const aborted = () =>
      signal.reason instanceof Error ? signal.reason : new BrokerUnavailableError('publish aborted before RabbitMQ confirmed it');
    const confirms = new ConfirmBatch(batch.length, onDurable);
    const link = this.publishLink;
    if (this.writing === undefined && link !== undefined && this.declared(batch)) {
      // One frame needs no coalescing (and a lone awaited publish no extra event-loop turn).
      if (batch.length > 1) link.writes.hold();
      const next = this.writeFrom(link, batch, 0, confirms);
      if (next < batch.length) await this.inWriteOrder(() => this.writeRest(link, batch, next, confirms, signal, aborted));
    } else {
      await this.inWriteOrder(async () => {
        if (signal.aborted) throw aborted();
        const current = this.publishLink ?? (await raceSignal(this.getPublishChannel(signal), signal, aborted));
        const exchangeErrors = await this.declareExchanges(batch, signal, aborted);
        if (batch.length > 1) current.writes.hold();
        const next = this.writeFrom(current, batch, 0, confirms, exchangeErrors);
        if (next < batch.length) await this.writeRest(current, batch, next, confirms, signal, aborted, exchangeErrors);
      });
    }
    return raceSignal(confirms.done, signal, aborted);
  }

  /** Whether the exchange of every message of `batch` was declared on this connection. */
  private declared(batch: readonly OutgoingMessage[]): boolean {
    let lastTopic: string | undefined;
    for (const m of batch) {
      if (m.topic === lastTopic) continue;
      lastTopic = m.topic;
      if (!this.ready.has(`e:${m.topic}`)) return false;
    }
    return true;
  }

  /** Declares the exchanges of `batch` not declared yet; returns the failed ones (their messages fail). */
  private async declareExchanges(
    batch: readonly OutgoingMessage[],
    signal: AbortSignal,
    aborted: () => Error,
  ): Promise<Map<string, Error> | undefined> {
    let declaring: Map<string, Promise<void>> | undefined;
    let lastTopic: string | undefined;
    for (const m of batch) {
      if (m.topic === lastTopic) continue;
      lastTopic = m.topic;
      if (this.ready.has(`e:${m.topic}`) || declaring?.has(m.topic)) continue;
      declaring ??= new Map();
      declaring.set(m.topic, this.ensureExchange(m.topic));
    }
    if (!declaring) return undefined;
    const failed = new Map<string, Error>();
    await raceSignal(
      Promise.all(
        [...declaring].map(([t, p]) =>
          p.catch((error: unknown) => {
            failed.set(t, error instanceof Error ? error : new Error(String(error)));
          }),
        ),
      ),
      signal,
      aborted,
    );
    return failed.size > 0 ? failed : undefined;
  }

  /**
   * Writes `batch` from message `from` on until the channel's buffer is full; returns the index of
   * the next message to write (`batch.length` when all were written).
   */
  private writeFrom(
    link: PublishLink,
    batch: readonly OutgoingMessage[],
    from: number,
    confirms: ConfirmBatch,
    exchangeErrors?: Map<string, Error>,
  ): number {
    const timestamp = Math.floor(Date.now() / 1000);
    for (let i = from; i < batch.length; i++) {
      const m = batch[i] as OutgoingMessage;
      const failed = exchangeErrors?.get(m.topic);
      if (failed) {
        confirms.fail(i, failed);
        continue;
      }
      if (!this.write(link, m.topic, m.topic, m.body, m.headers, timestamp, confirms, i)) return i + 1;
    }
    return batch.length;
  }

  /** Writes the rest of `batch` from `from` on, waiting for the channel's buffer to drain each time it filled. */
  private async writeRest(
    link: PublishLink,
    batch: readonly OutgoingMessage[],
    from: number,
    confirms: ConfirmBatch,
    signal: AbortSignal,
    aborted: () => Error,
    exchangeErrors?: Map<string, Error>,
  ): Promise<void> {
    let next = from;
    while (next < batch.length) {
      await raceSignal(this.drained(link.ch), signal, aborted);
      link.writes.hold();
      next = this.writeFrom(link, batch, next, confirms, exchangeErrors);
    }
  }

  /**
   * Runs `write` once every earlier publish call that had to wait has written; calls made while it
   * runs wait for it in turn (a FIFO: `write` runs after the previous holder finished, even if this
   * call was aborted meanwhile — `write` must then check its signal before writing).
   */
  private async inWriteOrder(write: () => Promise<void>): Promise<void> {
    const previous = this.writing;
    let release!: () => void;
    const mine = new Promise<void>((resolve) => {
      release = resolve;
    });
    this.writing = mine;
    try {
      if (previous) await previous;
      await write();
    } finally {
      if (this.writing === mine) this.writing = undefined;
      release();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Consuming

  /** @inheritDoc */
  async subscribe(spec: SubscriptionSpec, onDelivery: (delivery: Delivery) => void): Promise<TransportSubscription> {
    if (this.closing) throw new BrokerUnavailableError('the RabbitMQ transport is closed');
    const names = this.groupNamesOf(spec.topic, spec.group);
    const sub = new RabbitSubscription(this, spec, names, onDelivery);
    await sub.start();
    this.subscriptions.add(sub);
    return sub;
  }

  /** @internal */
  forget(sub: RabbitSubscription): void {
    this.subscriptions.delete(sub);
  }

  /** @internal */
  get internals() {
    return { logger: this.logger, options: this.options, closing: this.closing, connected: this.connection !== undefined };
  }

  // ---------------------------------------------------------------------------------------------
  // Dead letters

  /** @inheritDoc */
  async processDeadLetters(target: DeadLetterTarget, scan: DeadLetterScan): Promise<readonly StoredDeadLetter[]> {
    const names = this.groupNamesOf(target.topic, target.group);
    // Replays go to the group queue, so it must exist (it does once the group has subscribed).
    await this.ensureGroup(names);
    const ch = await this.channel();
    const selected: StoredDeadLetter[] = [];
    const kept: Message[] = [];
    const replays: Promise<void>[] = [];
    let n = 0;
    try {
      while (selected.length < scan.limit) {
        const msg = await ch.get(names.dlq, { noAck: false });
        if (msg === false) break;
        n++;
        const stored: StoredDeadLetter = {
          handle: `${names.dlq}#${n}`,
          headers: deadLetterHeaders(msg, names, target),
          body: new Uint8Array(msg.content),
        };
        const replacement = scan.select(stored);
        if (replacement === undefined || scan.dryRun) {
          kept.push(msg);
          if (replacement !== undefined) selected.push(stored);
          continue;
        }
        selected.push(stored);
        replays.push(
          this.sendToQueue(names.queue, stored.body, replacement).then(
            () => ch.ack(msg),
            (error: unknown) => {
              kept.push(msg);
              throw error;
            },
          ),
        );
      }
      const results = await Promise.allSettled(replays);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    } finally {
      // Kept (and failed) dead letters go back to the queue, in the order they were read.
      kept.sort((a, b) => a.fields.deliveryTag - b.fields.deliveryTag);
      for (const m of kept) {
        try {
          ch.nack(m, false, true);
        } catch {
          // channel already closed: the broker requeues unacknowledged messages itself
        }
      }
      await ch.close().catch(() => {});
    }
    return selected;
  }

  // ---------------------------------------------------------------------------------------------
  // Shutdown

  /** @inheritDoc */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    for (const w of this.connectWaiters) w();
    this.connectWaiters.clear();
    await Promise.allSettled([...this.subscriptions].map((s) => s.close()));
    const pub = this.publishChannel;
    this.publishChannel = undefined;
    this.publishLink = undefined;
    if (pub) await pub.then((link) => link.ch.close()).catch(() => {});
    const conn = this.connection;
    this.connection = undefined;
    if (conn) await conn.close().catch(() => {});
    this.setState('closed');
  }
}

/** Headers of a stored dead letter; synthesizes core's metadata for ones the broker dead-lettered. */
function deadLetterHeaders(msg: Message, names: GroupNames, target: DeadLetterTarget): Record<string, string> {
  const headers = fromAmqp(msg.properties.headers, msg.properties.contentType);
  if (headers[Headers.deadLetterReason] !== undefined) return headers;
  // Moved here by RabbitMQ itself (x-delivery-limit): the consumer crashed or lost its connection
  // with this message too many times.
  const raw = msg.properties.headers ?? {};
  const reason = String(raw['x-first-death-reason'] ?? raw['x-last-death-reason'] ?? 'unknown');
  const now = new Date().toISOString();
  const synthesized: Record<string, string> = {
    [Headers.deadLetterReason]: 'max-attempts',
    [Headers.deadLetterError]: `RabbitMQ dead-lettered the message from ${names.queue} (${reason}): it was redelivered too often without being settled`,
    [Headers.deadLetterFirstFailure]: now,
    [Headers.deadLetterLastFailure]: now,
    [Headers.deadLetterAttempts]: String(headerAttempt(headers) + deliveryCount(raw)),
    [Headers.deadLetterOrigin]: target.topic,
    [Headers.deadLetterPosition]: names.queue,
    [Headers.deadLetterGroup]: target.group,
  };
  for (const k of DEAD_LETTER_HEADERS) if (synthesized[k] !== undefined) headers[k] = synthesized[k] as string;
  return headers;
}

/** A consumer channel of a subscription and its acknowledgements. */
interface ConsumerLink {
  readonly ch: Channel;
  readonly acks: AckWindow;
}

/** One group consumption on its own channel. */
class RabbitSubscription implements TransportSubscription {
  private link: ConsumerLink | undefined;
  private consumerTag: string | undefined;
  private stopped = false;
  private closed = false;
  private inFlight = 0;
  /**
   * Retry copies this subscription is still publishing (`<ce_id>|<attempt>`): the copy can come
   * back from a short delay tier before its publisher saw the confirm. Its delivery waits until the
   * retry has settled (and core recorded the `retried` outcome), so outcomes stay in causal order.
   */
  readonly producing = new Map<string, Promise<void>>();
  private buffer: { link: ConsumerLink; msg: ConsumeMessage }[] = [];
  private resumeTimer: NodeJS.Timeout | undefined;
  private resumeAttempt = 0;
  private starting: Promise<void> | undefined;
  /** Quorum queues count redeliveries in `x-delivery-count`; classic ones only flag them. */
  private readonly quorum: boolean;

  constructor(
    private readonly transport: RabbitMqTransport,
    private readonly spec: SubscriptionSpec,
    readonly names: GroupNames,
    private readonly onDelivery: (delivery: Delivery) => void,
  ) {
    this.quorum = transport.internals.options.queueType === 'quorum';
  }

  private get logger(): Logger {
    return this.transport.internals.logger;
  }

  /** Declares the group's topology and starts consuming. Rejects if the first attempt fails. */
  async start(): Promise<void> {
    await this.consume();
  }

  private consume(): Promise<void> {
    if (this.starting) return this.starting;
    this.starting = (async () => {
      await this.transport.ensureGroup(this.names);
      const ch = await this.transport.channel();
      const link: ConsumerLink = { ch, acks: new AckWindow(ch, writesOf(ch)) };
      try {
        ch.on('close', () => this.onChannelClosed(link));
        await ch.prefetch(this.spec.concurrency);
        if (this.stopped) {
          await ch.close().catch(() => {});
          return;
        }
        this.link = link;
        const { consumerTag } = await ch.consume(this.names.queue, (msg) => this.onMessage(link, msg), { noAck: false });
        this.consumerTag = consumerTag;
        this.resumeAttempt = 0;
      } catch (error) {
        if (this.link === link) this.link = undefined;
        await ch.close().catch(() => {});
        throw error;
      }
    })().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  /** Re-establishes consumption after `delayMs` (after a reconnect or a lost channel). */
  resume(delayMs: number): void {
    if (this.stopped || this.link || this.resumeTimer) return;
    this.resumeTimer = setTimeout(() => {
      this.resumeTimer = undefined;
      if (this.stopped || this.link || !this.transport.internals.connected) return;
      this.consume().then(
        () => this.logger.info({ queue: this.names.queue }, 'RabbitMQ subscription resumed'),
        (error: unknown) => {
          this.logger.warn({ err: describeError(error), queue: this.names.queue }, 'RabbitMQ subscription could not resume; retrying');
          this.transport.forgetGroup(this.names);
          this.resumeAttempt++;
          if (this.transport.internals.connected) this.resume(backoffDelay(this.resumeAttempt, this.transport.internals.options.backoff));
        },
      );
    }, delayMs);
  }

  private onChannelClosed(link: ConsumerLink): void {
    link.acks.close(this.channelGone());
    if (this.link !== link) return;
    this.link = undefined;
    this.consumerTag = undefined;
    // Buffered messages were never handed over; the broker redelivers them.
    this.buffer = this.buffer.filter((b) => b.link !== link);
    if (this.stopped) return;
    this.logger.warn({ queue: this.names.queue }, 'RabbitMQ consumer channel closed');
    // If the connection is still up (channel-level error, or the queue was deleted), resume here;
    // otherwise the transport resumes every subscription once it has reconnected.
    if (this.transport.internals.connected) this.resume(backoffDelay(++this.resumeAttempt, this.transport.internals.options.backoff));
  }

  private onMessage(link: ConsumerLink, msg: ConsumeMessage | null): void {
    if (msg === null) {
      // Cancelled by the broker (queue deleted, node down): start over on a fresh channel.
      this.logger.warn({ queue: this.names.queue }, 'RabbitMQ cancelled the consumer');
      this.transport.forgetGroup(this.names);
      if (this.link === link) {
        this.onChannelClosed(link);
        void link.ch.close().catch(() => {});
      }
      return;
    }
    // Every delivery is recorded before anything else: a coalesced ack must never cover it unseen.
    link.acks.delivered(msg);
    if (this.stopped) {
      safely(() => link.acks.nack(msg));
      return;
    }
    if (this.inFlight >= this.spec.concurrency) {
      this.buffer.push({ link, msg });
      return;
    }
    this.dispatch(link, msg);
  }

  private pump(): void {
    while (!this.stopped && this.inFlight < this.spec.concurrency && this.buffer.length > 0) {
      const next = this.buffer.shift() as { link: ConsumerLink; msg: ConsumeMessage };
      this.dispatch(next.link, next.msg);
    }
  }

  private dispatch(link: ConsumerLink, msg: ConsumeMessage): void {
    this.inFlight++;
    const raw = msg.properties.headers;
    const headers = fromAmqp(raw, msg.properties.contentType);
    const redeliveries = this.quorum ? deliveryCount(raw) : msg.fields.redelivered ? 1 : 0;
    const delivery = new RabbitDelivery(this, link, msg, headers, headerAttempt(headers) + redeliveries);
    const retrying = delivery.attempt > 1 ? this.producing.get(`${headers[Headers.id]}|${delivery.attempt}`) : undefined;
    if (retrying === undefined) this.onDelivery(delivery);
    else
      void retrying
        .then(() => new Promise<void>((r) => setImmediate(r)))
        .then(() => {
          if (this.current(link) && !this.stopped) {
            this.onDelivery(delivery);
            return;
          }
          // Stopped (give it back, as onMessage does) or the channel closed (RabbitMQ redelivers).
          if (this.current(link)) safely(() => link.acks.nack(msg));
          this.settled();
        });
  }

  /** @internal Whether `link` is still this subscription's channel. */
  current(link: ConsumerLink): boolean {
    return this.link === link;
  }

  /** @internal A delivery was settled (whatever the outcome): its slot is free. */
  settled(): void {
    this.inFlight--;
    this.pump();
  }

  /** @internal */
  readonly channelGone = (): Error =>
    new BrokerUnavailableError(`the channel of ${this.names.queue} closed; RabbitMQ will redeliver the message`);

  /** @internal The transport (for the copies of retries, dead letters and releases). */
  get owner(): RabbitMqTransport {
    return this.transport;
  }

  /** @inheritDoc */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.resumeTimer);
    this.resumeTimer = undefined;
    await this.starting?.catch(() => {});
    const link = this.link;
    if (link && this.consumerTag) await link.ch.cancel(this.consumerTag).catch(() => {});
    for (const b of this.buffer.splice(0)) safely(() => b.link.acks.nack(b.msg));
  }

  /** @inheritDoc */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.stop();
    this.closed = true;
    const link = this.link;
    this.link = undefined;
    if (link) await link.ch.close().catch(() => {});
    this.transport.forget(this);
  }
}

/**
 * One message handed to core. A class rather than an object of closures: a delivery costs one
 * allocation (plus its headers and body), and `position` is built only when read.
 */
class RabbitDelivery implements Delivery {
  readonly body: Uint8Array;
  readonly key: string | undefined;
  private done = false;

  constructor(
    private readonly sub: RabbitSubscription,
    private readonly link: ConsumerLink,
    private readonly msg: ConsumeMessage,
    readonly headers: Record<string, string>,
    readonly attempt: number,
  ) {
    // A copy (from Node's buffer pool: ~5× cheaper than `new Uint8Array(content)`), so a
    // delivery does not keep amqplib's whole socket read buffer alive while it is in flight.
    this.body = Buffer.from(msg.content);
    this.key = headers[Headers.partitionKey];
  }

  get position(): string {
    return `${this.sub.names.queue}#${this.msg.fields.deliveryTag}`;
  }

  ack(): Promise<void> {
    if (this.done) return this.twice('ack');
    this.done = true;
    const acked = this.sub.current(this.link) ? this.link.acks.ack(this.msg, this.sub.channelGone) : Promise.reject(this.sub.channelGone());
    return this.settling(acked);
  }

  retry(delayMs: number, extraHeaders: Readonly<Record<string, string>>): Promise<void> {
    if (this.done) return this.twice('retry');
    this.done = true;
    const next = { ...this.headers, ...extraHeaders, [Headers.attempt]: String(this.attempt + 1) };
    const op = (async () => {
      if (delayMs <= 0) return this.copy(this.sub.names.queue, next);
      const tier = tierFor(delayMs, this.sub.owner.internals.options.delayTiersMs);
      return this.copy(await this.sub.owner.ensureDelayQueue(this.sub.names, tier), next);
    })();
    const key = `${this.headers[Headers.id]}|${this.attempt + 1}`;
    const producing = this.sub.producing;
    const settled = op.then(
      () => {},
      () => {},
    );
    producing.set(key, settled);
    void settled.then(() => {
      if (producing.get(key) === settled) producing.delete(key);
    });
    return this.settling(op);
  }

  deadLetter(deadLetterHeaders: Readonly<Record<string, string>>): Promise<void> {
    if (this.done) return this.twice('deadLetter');
    this.done = true;
    return this.settling(this.copy(this.sub.names.dlq, { ...this.headers, ...deadLetterHeaders }));
  }

  /**
   * A copy with the same attempt goes to the back of the group queue, so giving a message back on
   * shutdown does not count as a failed delivery (a requeue would raise x-delivery-count).
   */
  release(): Promise<void> {
    if (this.done) return this.twice('release');
    this.done = true;
    // On failure `copy` has already requeued the original (or the channel is gone, which requeues
    // it too): the message comes back either way.
    return this.settling(this.copy(this.sub.names.queue, { ...this.headers, [Headers.attempt]: String(this.attempt) }).catch(() => {}));
  }

  private twice(what: string): Promise<void> {
    return Promise.reject(new Error(`delivery ${this.msg.fields.deliveryTag} on ${this.sub.names.queue} was already settled (${what})`));
  }

  /** Frees the delivery's slot once `op` is over, whatever its outcome. */
  private settling(op: Promise<void>): Promise<void> {
    const sub = this.sub;
    return op.then(
      () => sub.settled(),
      (error: unknown) => {
        sub.settled();
        throw error;
      },
    );
  }

  /** Publishes a copy to `queue` with a confirm, then acknowledges the original. */
  private async copy(queue: string, copyHeaders: Record<string, string>): Promise<void> {
    const transport = this.sub.owner;
    try {
      await transport.sendToQueue(queue, this.body, copyHeaders);
    } catch (error) {
      // The copy did not land: give the original back so it is redelivered now rather than
      // staying unacknowledged until the channel closes; re-declare the target next time.
      transport.forgetQueue(queue);
      if (this.sub.current(this.link)) safely(() => this.link.acks.nack(this.msg));
      throw error;
    }
    if (!this.sub.current(this.link)) throw this.sub.channelGone();
    await this.link.acks.ack(this.msg, this.sub.channelGone);
  }
}

function safely(fn: () => void): void {
  try {
    fn();
  } catch {
    // the channel is gone; RabbitMQ requeues what was unacknowledged
  }
}
