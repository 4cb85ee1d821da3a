// Fault suite, RabbitMQ transport — against the shared local broker (the one other suites use), as
// a user of our own (so its password is a secret we can scan for, and the broker closes only our
// connections), behind our TCP proxy for the link faults. The broker-level faults — the broker
// closing every connection of our user, then `rabbitmqctl stop_app` / `start_app` — run last, and
// the broker is always started again, even when the test fails. The scenarios are the shared ones
// (lib/run.ts); RabbitMQ has no broker-specific fault of its own.
import { randomBytes } from 'node:crypto';
import { DEFAULT_DELAY_TIERS_MS } from '@busbar/rabbitmq';
import amqp from 'amqplib';
import { brokerForTests, brokersRequired, canConnect, type ResolvedBroker } from '../brokers/resolve.js';
import { rabbitmqctl, rabbitmqctlAvailable, until } from './lib/brokers.js';
import { TcpProxy } from './lib/proxy.js';
import { runFaults } from './lib/run.js';
import { RUN_ID, transportAvailable } from './lib/scenario.js';

// The broker-level faults drive the node with rabbitmqctl, so this suite needs the *local* node:
// BUSBAR_RABBITMQ_URL on this host, or :5672 (never a testcontainer rabbitmqctl cannot reach).
const rabbitUrl = process.env.BUSBAR_RABBITMQ_URL?.trim() || 'amqp://guest:guest@localhost:5672';
const rabbitHost = new URL(rabbitUrl).hostname;
const local = ['localhost', '127.0.0.1', '::1', '[::1]'].includes(rabbitHost);
const ctl = local && (await canConnect('127.0.0.1', Number(new URL(rabbitUrl).port || 5672))) && (await rabbitmqctlAvailable());
if (!ctl) {
  const reason = local
    ? 'no local RabbitMQ node that rabbitmqctl can drive (the broker-level faults need it)'
    : `BUSBAR_RABBITMQ_URL points at ${rabbitHost}; the fault suite needs a local node it can restart`;
  if (brokersRequired) throw new Error(`faults[rabbitmq]: ${reason}`);
  console.warn(`[faults] SKIPPING rabbitmq faults: ${reason}`);
}
const broker: ResolvedBroker | undefined = ctl ? { url: rabbitUrl, via: 'env', stop: async () => {} } : undefined;
const effectsBroker: ResolvedBroker | undefined = broker ? await brokerForTests('redis') : undefined;
const available = ctl && effectsBroker !== undefined && (await transportAvailable('rabbitmq'));

const user = `busbar-faults-${RUN_ID}`;
const password = `pw-${randomBytes(12).toString('hex')}`;
let host = '127.0.0.1';
let port = 5672;
let vhost = '/';
let proxy: TcpProxy | undefined;
let raw: amqp.ChannelModel | undefined;

const url = (p: number, pw = password) =>
  `amqp://${encodeURIComponent(user)}:${encodeURIComponent(pw)}@${host}:${p}/${encodeURIComponent(vhost)}`;

/** The raw client's connection, opened again after the broker closed it (restart, close_all_…). */
async function rawConnection(): Promise<amqp.ChannelModel> {
  if (!raw) {
    const c = await amqp.connect(url(port));
    c.on('error', () => {});
    c.on('close', () => {
      if (raw === c) raw = undefined;
    });
    raw = c;
  }
  return raw;
}

/** Runs `fn` on a fresh channel of the raw connection (a channel error closes only that channel). */
async function onChannel<T>(fn: (ch: amqp.ConfirmChannel) => Promise<T>): Promise<T> {
  const ch = await (await rawConnection()).createConfirmChannel();
  ch.on('error', () => {});
  try {
    return await fn(ch);
  } finally {
    await ch.close().catch(() => {});
  }
}

/** `rabbitmqctl stop_app`, then `start_app` — always, even when stopping failed half-way. */
async function restartRabbit(): Promise<void> {
  try {
    await rabbitmqctl('stop_app');
  } finally {
    await rabbitmqctl('start_app');
    await rabbitmqctl('await_startup', '--timeout', '120');
    await until(
      async () => {
        const c = await amqp.connect(url(port));
        await c.close();
        return true;
      },
      60_000,
      'RabbitMQ to accept connections again',
      250,
    );
  }
}

runFaults({
  name: 'rabbitmq',
  available,
  effectsUrl: effectsBroker?.url,
  setUp: async () => {
    if (!broker) throw new Error('faults[rabbitmq]: no broker');
    const u = new URL(broker.url);
    host = u.hostname === 'localhost' ? '127.0.0.1' : u.hostname;
    port = Number(u.port || 5672);
    vhost = decodeURIComponent(u.pathname.slice(1)) || '/';
    await rabbitmqctl('add_user', user, password);
    await rabbitmqctl('set_permissions', '-p', vhost, user, '.*', '.*', '.*');
    const link = await TcpProxy.start({ targetHost: host, targetPort: port });
    proxy = link;
    await rawConnection();
    return {
      name: 'rabbitmq',
      proxy: link,
      secret: password,
      spec: (via, extra = {}) => ({
        kind: 'rabbitmq',
        options: {
          url: url(via === 'proxy' ? link.port : port),
          // Short heartbeats so a silent (half-open, black-holed) link is noticed in seconds.
          heartbeatSeconds: 2,
          reconnect: { backoff: { initialMs: 50, maxMs: 1000 }, waitForConnectionMs: 1000 },
          connectionName: `busbar-faults-${RUN_ID}`,
          ...extra,
        },
      }),
      // As a user configures it: heartbeat and reconnect at their defaults.
      defaultSpec: (via) => ({
        kind: 'rabbitmq',
        options: { url: url(via === 'proxy' ? link.port : port), connectionName: `busbar-faults-${RUN_ID}` },
      }),
      rawWrite: (topic, m) =>
        onChannel(async (ch) => {
          // The CloudEvents AMQP binding, written by hand: ce_<attr> → cloudEvents_<attr>,
          // content-type → the content_type property.
          const headers: Record<string, string> = {};
          for (const [k, v] of Object.entries(m.headers)) {
            if (k === 'content-type') continue;
            headers[k.startsWith('ce_') ? `cloudEvents_${k.slice(3)}` : k] = v;
          }
          const options: amqp.Options.Publish = { persistent: true, headers };
          if (m.headers['content-type'] !== undefined) options.contentType = m.headers['content-type'];
          ch.publish(topic, topic, Buffer.from(m.body), options);
          await ch.waitForConfirms();
        }),
      breakDeadLetters: async (topic, group) => {
        const dlq = `${topic}:${group}:dlq`;
        // Deleting the (empty) dead-letter queue makes every dead-letter write come back unroutable.
        await onChannel((ch) => ch.deleteQueue(dlq));
        return async () => {
          await onChannel((ch) => ch.assertQueue(dlq, { durable: true, arguments: { 'x-queue-type': 'quorum' } }));
        };
      },
      warmUpDeadLetters: false,
      cleanup: async (namespace) => {
        const topic = `${namespace}.faults.order`;
        const queue = `${topic}:workers`;
        for (const q of [queue, `${queue}:dlq`, ...DEFAULT_DELAY_TIERS_MS.map((t) => `${queue}:delay:${t}`)]) {
          await onChannel((ch) => ch.deleteQueue(q)).catch(() => {});
        }
        await onChannel((ch) => ch.deleteExchange(topic)).catch(() => {});
      },
      wrongCredentialsSpec: (pw) => ({ kind: 'rabbitmq', options: { url: url(port, pw), reconnect: { waitForConnectionMs: 500 } } }),
    };
  },
  tearDown: async () => {
    await raw?.close().catch(() => {});
    await proxy?.close();
    await rabbitmqctl('delete_user', user).catch((e) => console.warn(`[faults] could not delete RabbitMQ user ${user}: ${String(e)}`));
    await effectsBroker?.stop();
    await broker?.stop();
  },
  // Broker-level faults last: they disrupt the shared broker (closing our user's connections, then
  // stopping and starting the node).
  dropConnections: {
    how: 'rabbitmqctl close_all_user_connections',
    last: true,
    drop: async () => {
      await rabbitmqctl('close_all_user_connections', user, 'busbar fault suite');
      return undefined;
    },
  },
  restart: {
    how: 'rabbitmqctl stop_app + start_app',
    title: '2. broker restarted (rabbitmqctl stop_app / start_app), always restored',
    last: true,
    restart: () => restartRabbit(),
  },
});
