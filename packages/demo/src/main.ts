/**
 * The Busbar demo — the seed's scenario, end to end:
 *   a user service publishes `user.created`; billing and notifications, in separate groups, each
 *   react; a poison event is retried with growing delays, dead-lettered with its reason, and replayed
 *   once fixed; a duplicate publish with the same idempotency key has one effect.
 *
 * In-memory by default; any broker with BUSBAR_TRANSPORT=rabbitmq|kafka|redis-streams (URLs from
 * BUSBAR_RABBITMQ_URL / BUSBAR_KAFKA_BROKERS / BUSBAR_REDIS_URL), chosen by `transportFromEnv()`.
 * Everything a run declares on the broker lives under a run-unique namespace and is deleted at the
 * end, unless `--keep` is given.
 */
import { randomUUID } from 'node:crypto';
import {
  type BusbarEnv,
  type DeliveryOutcome,
  defineEvent,
  describeError,
  EventBus,
  MemoryIdempotencyStore,
  namespaceFromEnv,
  OutcomeSpy,
  readBusbarEnv,
  redact,
  transportFromEnv,
} from '@busbar/core';
import { z } from 'zod';
import { deleteDemoObjects } from './cleanup.js';
import { c, say } from './output.js';

const UserCreated = defineEvent({
  type: 'user.created',
  version: 1,
  schema: z.object({ userId: z.string(), email: z.email(), plan: z.enum(['free', 'pro']) }),
});

const USAGE = `usage: pnpm demo [--keep]
  --keep   leave the run's queues / topics / streams on the broker (they are deleted by default)
environment: BUSBAR_TRANSPORT=memory|rabbitmq|kafka|redis-streams, BUSBAR_RABBITMQ_URL,
  BUSBAR_KAFKA_BROKERS, BUSBAR_REDIS_URL, BUSBAR_NAMESPACE (prefix of the run's namespace), NO_COLOR`;

/** How long the demo waits for its broker before giving up (it then exits with code 1). */
const READY_TIMEOUT_MS = 10_000;

/** The broker each transport talks to, for the "is … running?" line. */
const BROKERS: Record<BusbarEnv['transport'], string> = {
  memory: 'the in-memory broker',
  rabbitmq: 'RabbitMQ',
  kafka: 'Kafka',
  'redis-streams': 'Redis',
};

async function main(args: readonly string[]): Promise<void> {
  const unknown = args.filter((a) => a !== '--keep');
  if (unknown.length > 0) {
    console.error(unknown.some((a) => a === '--help' || a === '-h') ? USAGE : `unknown argument ${unknown[0]}\n${USAGE}`);
    process.exitCode = unknown.some((a) => a === '--help' || a === '-h') ? 0 : 2;
    return;
  }
  const keep = args.includes('--keep');
  const env = readBusbarEnv();
  const transport = await transportFromEnv();
  // A run-unique namespace keeps repeated demo runs on a shared broker apart (under BUSBAR_NAMESPACE if set).
  const prefix = namespaceFromEnv();
  const namespace = `${prefix ? `${prefix}.` : ''}demo-${randomUUID().slice(0, 8)}`;
  const bus = new EventBus({
    transport,
    namespace,
    source: 'urn:busbar:demo:user-service',
    idempotency: { store: new MemoryIdempotencyStore() },
    // Jitter off so the growth is easy to see; the default is full jitter (uniform up to the cap).
    retry: { maxAttempts: 4, backoff: { initialMs: 150, multiplier: 2, maxMs: 2000, jitter: 'none' } },
  });
  let ok = false;
  let connected = false;
  try {
    // ready() resolves only once the broker answered; when it cannot be reached it rejects after
    // READY_TIMEOUT_MS (at once for refused credentials), naming the endpoint and the cause.
    try {
      await bus.ready({ timeoutMs: READY_TIMEOUT_MS });
      connected = true;
    } catch (error) {
      const endpoint = transport.endpoint ?? endpointFromEnv(env);
      console.error(`${c.red}cannot start: is ${BROKERS[env.transport]} running at ${endpoint}?${c.reset}`);
      console.error(`${c.dim}${describeError(error)}${c.reset}`);
      process.exitCode = 1;
      return;
    }
    ok = await scenario(bus, transport.name, namespace);
  } finally {
    // close() waits for running handlers and pending publishes (up to closeTimeoutMs), then closes
    // the transport; only then are the run's objects deleted. After it, nothing keeps the process
    // alive: a demo that could not connect exits too.
    await bus.close();
    // Nothing was declared on a broker the demo never reached.
    if (connected && keep) {
      console.log(`${c.dim}--keep: the run's broker objects stay, all named under "${namespace}"${c.reset}`);
    } else if (connected && env.transport !== 'memory') {
      const deleted = await deleteDemoObjects(env, transport, namespace);
      console.log(`${c.dim}cleaned up: deleted ${deleted} (run with --keep to leave them)${c.reset}`);
    }
  }
  console.log(ok ? `\n${c.green}demo finished: all checks passed${c.reset}` : `\n${c.red}demo finished with failed checks${c.reset}`);
  process.exitCode = ok ? 0 : 1;
}

/** Where the environment points the transport (redacted), for a transport that does not say. */
function endpointFromEnv(env: BusbarEnv): string {
  switch (env.transport) {
    case 'memory':
      return 'memory';
    case 'rabbitmq':
      return redact(env.rabbitmqUrl);
    case 'kafka':
      return `kafka ${env.kafkaBrokers.join(',')}`;
    case 'redis-streams':
      return redact(env.redisUrl);
  }
}

/** The four scenes; resolves whether every check held. */
async function scenario(bus: EventBus, transportName: string, namespace: string): Promise<boolean> {
  const spy = new OutcomeSpy(bus);
  console.log(`${c.dim}transport: ${transportName} · namespace: ${namespace}${c.reset}\n`);

  let billingBroken = true;
  const invoices = new Map<string, number>();
  await bus.subscribe(UserCreated, { group: 'billing', concurrency: 4 }, async (user, ctx) => {
    if (user.email.startsWith('poison') && billingBroken) {
      say('billing', c.red, `attempt ${ctx.attempt}: payment provider rejects ${user.email}`);
      throw new Error(`payment provider rejected ${user.email}`);
    }
    invoices.set(ctx.idempotencyKey, (invoices.get(ctx.idempotencyKey) ?? 0) + 1);
    say('billing', c.green, `opened a ${user.plan} account for ${user.userId} (attempt ${ctx.attempt})`);
  });
  await bus.subscribe(UserCreated, { group: 'notifications', concurrency: 4 }, async (user) => {
    say('notifications', c.cyan, `sent a welcome email to ${user.email}`);
  });

  bus.on('outcome', (info, outcome: DeliveryOutcome) => {
    if (outcome.status === 'retried') {
      say('bus', c.yellow, `${info.group}: attempt ${info.attempt} failed, retry in ${outcome.delayMs} ms (held by the transport)`);
    }
  });

  console.log('1) a user signs up');
  const alice = await bus.publish(UserCreated, { userId: 'u-1', email: 'alice@example.com', plan: 'pro' });
  say('user-service', c.dim, `published user.created ${alice.id}`);
  await Promise.all([
    spy.waitFor(alice.id, { group: 'billing', status: 'acked' }),
    spy.waitFor(alice.id, { group: 'notifications', status: 'acked' }),
  ]);

  console.log('\n2) the same sign-up is published twice with one idempotency key');
  const key = 'signup-u-2';
  const first = await bus.publish(UserCreated, { userId: 'u-2', email: 'bob@example.com', plan: 'free' }, { idempotencyKey: key });
  const again = await bus.publish(UserCreated, { userId: 'u-2', email: 'bob@example.com', plan: 'free' }, { idempotencyKey: key });
  await spy.waitFor(first.id, { group: 'billing', status: 'acked' });
  await spy.waitFor(again.id, { group: 'billing', status: 'duplicate' });
  say('bus', c.dim, `second copy ${again.id.slice(0, 8)}… acknowledged as a duplicate, handler not run`);
  say('check', c.green, `invoices for ${key}: ${invoices.get(key)} (expected 1)`);

  console.log('\n3) a poison event: retried with growing delays, then dead-lettered');
  const poison = await bus.publish(UserCreated, { userId: 'u-3', email: 'poison@example.com', plan: 'pro' });
  const dead = await spy.waitFor(poison.id, { group: 'billing', status: 'dead-lettered', timeoutMs: 30_000 });
  if (dead.outcome.status === 'dead-lettered') {
    say(
      'bus',
      c.red,
      `dead-lettered after ${dead.info.attempt} attempts — reason ${dead.outcome.reason.kind}: ${dead.outcome.reason.detail}`,
    );
  }
  const dlq = bus.deadLetters(UserCreated, 'billing');
  const [letter] = await dlq.list();
  if (letter) {
    say('dead letters', c.dim, `billing holds ${letter.id.slice(0, 8)}… reason=${letter.reason.kind} attempts=${letter.attempts}`);
    say('dead letters', c.dim, `payload intact: ${new TextDecoder().decode(letter.body)}`);
  }

  console.log('\n4) billing is fixed; the dead letter is replayed to billing only');
  billingBroken = false;
  const replayed = await dlq.replay({ filter: (d) => d.id === poison.id });
  say('bus', c.dim, `replayed ${replayed.length} dead letter(s)`);
  await spy.waitUntil((r) => r.info.id === poison.id && r.info.group === 'billing' && r.outcome.status === 'acked', { timeoutMs: 30_000 });
  const notifiedPoison = spy.of(poison.id).filter((r) => r.info.group === 'notifications').length;
  say('check', c.green, `notifications saw the poison event ${notifiedPoison} time(s) (expected 1: replay reaches only billing)`);

  spy.dispose();
  return invoices.get(key) === 1 && notifiedPoison === 1 && replayed.length === 1;
}

main(process.argv.slice(2)).catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
