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
import { type RabbitMqOptions, type ResolvedOptions, resolveOptions } from './options.js';
import { BINDING_KEY, delayQueueArgs, dlqArgs, EXCHANGE_TYPE, type GroupNames, groupNames, groupQueueArgs, tierFor } from './topology.js';
import { deliveryCount, fromAmqp, headerAttempt, toAmqp } from './wire.js';

/** Broker objects a transport instance declared (for operations tooling and test cleanup). */
export interface DeclaredObjects {
  /** Exchange names. */
  readonly exchanges: readonly string[];
  /** Queue names (group queues, delay queues, dead-letter queues). */
  readonly queues: readonly string[];
}

/** RabbitMQ names: up to 255 bytes; we never derive names starting with the reserved `amq.`. */
const NAME_PATTERN = /^(?!amq\.)[A-Za-z0-9._:-]+$/;

interface PendingConfirm {
  returned: boolean;
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
 *   written into the confirm window at once and each message resolves on its own ack/nack;
 *   an unroutable message (no queue bound) fails with `PublishRejectedError`.
 * - Each subscription consumes its group queue on its own channel with prefetch = concurrency and
 *   acknowledges after core settled the delivery.
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
  private publishChannel: Promise<ConfirmChannel> | undefined;
  private readonly pendingConfirms = new Map<string, PendingConfirm[]>();
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

  private getPublishChannel(signal?: AbortSignal): Promise<ConfirmChannel> {
    if (this.publishChannel) return this.publishChannel;
    const created = (async () => {
      const conn = await this.live(signal);
      const ch = await conn.createConfirmChannel();
      ch.on('error', (error: unknown) => {
        this.logger.warn({ err: describeError(error) }, 'RabbitMQ publish channel error');
        // A 404 (exchange or queue deleted under us) invalidates what we believed declared.
        this.ready = new Set();
      });
      ch.on('close', () => {
        if (this.publishChannel === created) this.publishChannel = undefined;
      });
      ch.on('return', (msg: Message) => this.onReturn(msg));
      return ch;
    })();
    this.publishChannel = created;
    created.catch(() => {
      if (this.publishChannel === created) this.publishChannel = undefined;
    });
    return created;
  }

  private confirmKey(exchange: string, routingKey: string, messageId: string | undefined): string {
    return `${exchange}\u0000${routingKey}\u0000${messageId ?? ''}`;
  }

  private onReturn(msg: Message): void {
    const key = this.confirmKey(msg.fields.exchange, msg.fields.routingKey, msg.properties.messageId as string | undefined);
    const pending = this.pendingConfirms.get(key)?.find((p) => !p.returned);
    if (pending) pending.returned = true;
  }

  /**
   * Writes one message on the confirm channel. `confirmed` resolves on the broker's ack and rejects
   * with `PublishRejectedError` on nack or return (unroutable), `BrokerUnavailableError` when the
   * channel closed before the confirm (outcome unknown). `written` is false when the channel's
   * buffer is full: wait for its `drain` before writing more.
   */
  private write(
    ch: ConfirmChannel,
    exchange: string,
    routingKey: string,
    body: Uint8Array,
    headers: Readonly<Record<string, string>>,
  ): { written: boolean; confirmed: Promise<void> } {
    const amqp = toAmqp(headers);
    const props: Options.Publish = {
      persistent: true,
      mandatory: true,
      headers: amqp.headers,
      timestamp: Math.floor(Date.now() / 1000),
    };
    if (amqp.contentType !== undefined) props.contentType = amqp.contentType;
    if (amqp.messageId !== undefined) props.messageId = amqp.messageId;
    const key = this.confirmKey(exchange, routingKey, amqp.messageId);
    const record: PendingConfirm = { returned: false };
    const list = this.pendingConfirms.get(key);
    if (list) list.push(record);
    else this.pendingConfirms.set(key, [record]);
    const forget = () => {
      const l = this.pendingConfirms.get(key);
      if (!l) return;
      const i = l.indexOf(record);
      if (i >= 0) l.splice(i, 1);
      if (l.length === 0) this.pendingConfirms.delete(key);
    };
    const where = exchange === '' ? `queue "${routingKey}"` : `exchange "${exchange}"`;
    let written = true;
    const confirmed = new Promise<void>((resolve, reject) => {
      try {
        const content = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
        written = ch.publish(exchange, routingKey, content, props, (err: unknown) => {
          forget();
          if (err === null || err === undefined) {
            if (!record.returned) resolve();
            else if (exchange === '') reject(new PublishRejectedError(`${where} does not exist; RabbitMQ returned the message unroutable`));
            else
              reject(
                new PublishRejectedError(
                  `no queue is bound to ${where}; RabbitMQ returned the message unroutable (subscribe a group first)`,
                ),
              );
          } else if (err instanceof Error && err.message === 'message nacked') {
            reject(new PublishRejectedError(`RabbitMQ nacked the message on ${where} (a queue refused it)`));
          } else {
            reject(
              new BrokerUnavailableError(`the channel closed before RabbitMQ confirmed the message on ${where}; outcome unknown`, {
                cause: err,
              }),
            );
          }
        });
      } catch (error) {
        forget();
        if (error instanceof RangeError)
          reject(new PublishRejectedError(`message could not be encoded: ${describeError(error)}`, { cause: error }));
        else reject(new BrokerUnavailableError(`publish on ${where} failed: ${describeError(error)}`, { cause: error }));
      }
    });
    return { written, confirmed };
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
    const ch = await this.getPublishChannel();
    const { written, confirmed } = this.write(ch, '', queue, body, headers);
    if (!written) await this.drained(ch);
    await confirmed;
  }

  /** @inheritDoc */
  async publish(batch: readonly OutgoingMessage[], signal: AbortSignal): Promise<readonly PublishOutcome[]> {
    const aborted = () =>
      signal.reason instanceof Error ? signal.reason : new BrokerUnavailableError('publish aborted before RabbitMQ confirmed it');
    const ch = await raceSignal(this.getPublishChannel(signal), signal, aborted);
    const topics = new Map<string, Promise<void>>();
    for (const m of batch) {
      if (!topics.has(m.topic)) topics.set(m.topic, this.ensureExchange(m.topic));
    }
    const exchangeErrors = new Map<string, Error>();
    await raceSignal(
      Promise.all(
        [...topics].map(([t, p]) =>
          p.catch((error: unknown) => {
            exchangeErrors.set(t, error instanceof Error ? error : new Error(String(error)));
          }),
        ),
      ),
      signal,
      aborted,
    );
    const results: Promise<PublishOutcome>[] = [];
    for (const m of batch) {
      const failed = exchangeErrors.get(m.topic);
      if (failed) {
        results.push(Promise.resolve({ ok: false, error: failed }));
        continue;
      }
      const { written, confirmed } = this.write(ch, m.topic, m.topic, m.body, m.headers);
      results.push(
        confirmed.then(
          (): PublishOutcome => ({ ok: true }),
          (error: Error): PublishOutcome => ({ ok: false, error }),
        ),
      );
      if (!written) await raceSignal(this.drained(ch), signal, aborted);
    }
    return raceSignal(Promise.all(results), signal, aborted);
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
    if (pub) await pub.then((ch) => ch.close()).catch(() => {});
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

/** One group consumption on its own channel. */
class RabbitSubscription implements TransportSubscription {
  private ch: Channel | undefined;
  private consumerTag: string | undefined;
  private stopped = false;
  private closed = false;
  private inFlight = 0;
  private buffer: { ch: Channel; msg: ConsumeMessage }[] = [];
  private resumeTimer: NodeJS.Timeout | undefined;
  private resumeAttempt = 0;
  private starting: Promise<void> | undefined;

  constructor(
    private readonly transport: RabbitMqTransport,
    private readonly spec: SubscriptionSpec,
    private readonly names: GroupNames,
    private readonly onDelivery: (delivery: Delivery) => void,
  ) {}

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
      try {
        ch.on('close', () => this.onChannelClosed(ch));
        await ch.prefetch(this.spec.concurrency);
        if (this.stopped) {
          await ch.close().catch(() => {});
          return;
        }
        this.ch = ch;
        const { consumerTag } = await ch.consume(this.names.queue, (msg) => this.onMessage(ch, msg), { noAck: false });
        this.consumerTag = consumerTag;
        this.resumeAttempt = 0;
      } catch (error) {
        if (this.ch === ch) this.ch = undefined;
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
    if (this.stopped || this.ch || this.resumeTimer) return;
    this.resumeTimer = setTimeout(() => {
      this.resumeTimer = undefined;
      if (this.stopped || this.ch || !this.transport.internals.connected) return;
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

  private onChannelClosed(ch: Channel): void {
    if (this.ch !== ch) return;
    this.ch = undefined;
    this.consumerTag = undefined;
    // Buffered messages were never handed over; the broker redelivers them.
    this.buffer = this.buffer.filter((b) => b.ch !== ch);
    if (this.stopped) return;
    this.logger.warn({ queue: this.names.queue }, 'RabbitMQ consumer channel closed');
    // If the connection is still up (channel-level error, or the queue was deleted), resume here;
    // otherwise the transport resumes every subscription once it has reconnected.
    if (this.transport.internals.connected) this.resume(backoffDelay(++this.resumeAttempt, this.transport.internals.options.backoff));
  }

  private onMessage(ch: Channel, msg: ConsumeMessage | null): void {
    if (msg === null) {
      // Cancelled by the broker (queue deleted, node down): start over on a fresh channel.
      this.logger.warn({ queue: this.names.queue }, 'RabbitMQ cancelled the consumer');
      this.transport.forgetGroup(this.names);
      if (this.ch === ch) {
        this.onChannelClosed(ch);
        void ch.close().catch(() => {});
      }
      return;
    }
    if (this.stopped) {
      safely(() => ch.nack(msg, false, true));
      return;
    }
    if (this.inFlight >= this.spec.concurrency) {
      this.buffer.push({ ch, msg });
      return;
    }
    this.dispatch(ch, msg);
  }

  private pump(): void {
    while (!this.stopped && this.inFlight < this.spec.concurrency && this.buffer.length > 0) {
      const next = this.buffer.shift() as { ch: Channel; msg: ConsumeMessage };
      this.dispatch(next.ch, next.msg);
    }
  }

  private dispatch(ch: Channel, msg: ConsumeMessage): void {
    this.inFlight++;
    const headers = fromAmqp(msg.properties.headers, msg.properties.contentType);
    const queueType = this.transport.internals.options.queueType;
    const redeliveries = queueType === 'quorum' ? deliveryCount(msg.properties.headers) : msg.fields.redelivered ? 1 : 0;
    const attempt = headerAttempt(headers) + redeliveries;
    const key = headers[Headers.partitionKey];
    let settled = false;
    const settle = async (what: string, op: () => Promise<void>): Promise<void> => {
      if (settled) throw new Error(`delivery ${msg.fields.deliveryTag} on ${this.names.queue} was already settled (${what})`);
      settled = true;
      try {
        await op();
      } finally {
        this.inFlight--;
        this.pump();
      }
    };
    const onChannel = (fn: () => void): void => {
      if (this.ch !== ch) {
        throw new BrokerUnavailableError(`the channel of ${this.names.queue} closed; RabbitMQ will redeliver the message`);
      }
      fn();
    };
    const copy = async (queue: string, copyHeaders: Record<string, string>) => {
      try {
        await this.transport.sendToQueue(queue, new Uint8Array(msg.content), copyHeaders);
      } catch (error) {
        // The copy did not land: give the original back so it is redelivered now rather than
        // staying unacknowledged until the channel closes; re-declare the target next time.
        this.transport.forgetQueue(queue);
        if (this.ch === ch) safely(() => ch.nack(msg, false, true));
        throw error;
      }
      onChannel(() => ch.ack(msg));
    };
    const delivery: Delivery = {
      headers,
      body: new Uint8Array(msg.content),
      attempt,
      position: `${this.names.queue}#${msg.fields.deliveryTag}`,
      key,
      ack: () => settle('ack', async () => onChannel(() => ch.ack(msg))),
      retry: (delayMs, extraHeaders) =>
        settle('retry', async () => {
          const next = { ...headers, ...extraHeaders, [Headers.attempt]: String(attempt + 1) };
          if (delayMs <= 0) return copy(this.names.queue, next);
          const tier = tierFor(delayMs, this.transport.internals.options.delayTiersMs);
          return copy(await this.transport.ensureDelayQueue(this.names, tier), next);
        }),
      deadLetter: (deadLetterHeaders) => settle('deadLetter', () => copy(this.names.dlq, { ...headers, ...deadLetterHeaders })),
      // A copy with the same attempt goes to the back of the group queue, so giving a message back
      // on shutdown does not count as a failed delivery (a requeue would raise x-delivery-count).
      release: () =>
        settle('release', async () => {
          // On failure `copy` has already requeued the original (or the channel is gone, which
          // requeues it too): the message comes back either way.
          await copy(this.names.queue, { ...headers, [Headers.attempt]: String(attempt) }).catch(() => {});
        }),
    };
    this.onDelivery(delivery);
  }

  /** @inheritDoc */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.resumeTimer);
    this.resumeTimer = undefined;
    await this.starting?.catch(() => {});
    const ch = this.ch;
    if (ch && this.consumerTag) await ch.cancel(this.consumerTag).catch(() => {});
    for (const b of this.buffer.splice(0)) safely(() => b.ch.nack(b.msg, false, true));
  }

  /** @inheritDoc */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.stop();
    this.closed = true;
    const ch = this.ch;
    this.ch = undefined;
    if (ch) await ch.close().catch(() => {});
    this.transport.forget(this);
  }
}

function safely(fn: () => void): void {
  try {
    fn();
  } catch {
    // the channel is gone; RabbitMQ requeues what was unacknowledged
  }
}
