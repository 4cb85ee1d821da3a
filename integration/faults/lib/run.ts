/**
 * `runFaults(target)`: the fault suite's counterpart of `runConformance(target)`. A transport's
 * fault file describes once how to reach, break and clean its broker ({@link FaultSuiteTarget});
 * this registers every shared scenario that applies to it under `faults[<name>]`, in one order for
 * every transport. The file keeps only its broker-specific faults ({@link FaultSuiteTarget.specific}).
 *
 * A shared scenario applies when the target can inject its fault: `broker-restart` needs
 * {@link FaultSuiteTarget.restart}, `broker-paused` {@link FaultSuiteTarget.pause},
 * `connections-killed` {@link FaultSuiteTarget.dropConnections}; every other one applies to every
 * transport. {@link FaultSuiteTarget.scenarios} narrows the set (e.g. a second client's run keeps
 * only the scenarios where the client matters); naming a scenario whose fault the target cannot
 * inject is an error, never a silent skip.
 */
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, it } from 'vitest';
import { blackholeDetection, DETECTION_BOUND_MS, subscribeLinkReset } from './link-scenarios.js';
import type { FaultTarget } from './scenario.js';
import {
  brokerDownAtStart,
  consumerKilled,
  deadLetterFailing,
  droppedConnections,
  type FaultEnv,
  faultUnderLoad,
  hostileInput,
  pausedBroker,
  proxyFaults,
  restartedBroker,
  secrets,
  slowConsumer,
} from './scenarios.js';

/** The shared scenarios, by the name their row carries in reports/faults.json. */
export const SHARED_SCENARIOS = [
  'consumer-kill',
  'connections-killed',
  'broker-restart',
  'proxy-cut',
  'proxy-reset',
  'proxy-blackhole',
  'proxy-half-open',
  'blackhole-detection',
  'subscribe-link-reset',
  'broker-paused',
  'down-at-start',
  'slow-consumer',
  'hostile-input',
  'dead-letter-failing',
  'secrets',
] as const;

/** One of {@link SHARED_SCENARIOS}. */
export type SharedScenario = (typeof SHARED_SCENARIOS)[number];

/** A broker-level fault the target can inject under load. */
interface BrokerFault {
  /** How the fault is made, in the test title and the row's notes (`kill -9 + restart …`). */
  readonly how: string;
  /** Test title, when `how` alone does not say enough. */
  readonly title?: string;
  /**
   * Register it after every other scenario (broker-specific ones included), because it disrupts a
   * broker other suites share. @defaultValue false
   */
  readonly last?: boolean;
}

/** What a transport provides to run the fault suite: its broker, how to break it, which scenarios. */
export interface FaultSuiteTarget {
  /** Transport name: `faults[<name>]` in test names, `transport` in the report rows. */
  readonly name: FaultTarget['name'];
  /**
   * Whether this machine can run the transport's faults (its broker, the effects Redis, the built
   * package). The file decides and logs why not; under `BUSBAR_REQUIRE_BROKERS` it throws instead.
   */
  readonly available: boolean;
  /** URL of the Redis that records effects and holds the idempotency store (shared by every file). */
  readonly effectsUrl: string | undefined;
  /**
   * Starts what the scenarios need (a broker of its own, the TCP proxy, raw clients) and returns
   * the target the scenarios run against: how to build a transport (`spec`, with the client
   * choice), write below the bus, break the dead letters, locate a message, clean up.
   */
  setUp(): Promise<FaultTarget>;
  /** Stops and removes everything {@link setUp} started. Runs even when setUp failed half-way. */
  tearDown(): Promise<void>;
  /** Bound on setUp / tearDown, ms. @defaultValue 60000 */
  readonly hookTimeoutMs?: number;
  /** Runs before every scenario (e.g. start the broker again if a failed scenario left it dead). */
  beforeEachScenario?(): Promise<void>;
  /** Bound on {@link beforeEachScenario}, ms. @defaultValue 180000 */
  readonly beforeEachTimeoutMs?: number;
  /** Restarts the broker (durable state kept); resolves once it accepts connections again. */
  readonly restart?: BrokerFault & { restart(): Promise<void> };
  /** Freezes the broker process (SIGSTOP) and thaws it (SIGCONT). */
  readonly pause?: { pause(): void; resume(): void };
  /** Makes the broker close the suite's client connections; resolves with how many it closed, if known. */
  readonly dropConnections?: BrokerFault & { drop(): Promise<number | undefined> };
  /** The shared scenarios to register. @defaultValue every one that applies to the target */
  readonly scenarios?: readonly SharedScenario[];
  /**
   * Registers the broker-specific faults, inside `faults[<name>]` after the shared scenarios (and
   * before those marked `last`). `target()` and `env()` are valid once the suite's setUp ran.
   */
  specific?(ctx: { target(): FaultTarget; env(): FaultEnv }): void;
}

/** The shared scenarios that apply to `t` (whose fault it can inject), in registration order. */
export function applicableScenarios(t: Pick<FaultSuiteTarget, 'restart' | 'pause' | 'dropConnections'>): SharedScenario[] {
  return SHARED_SCENARIOS.filter(
    (s) =>
      (s !== 'broker-restart' || t.restart !== undefined) &&
      (s !== 'broker-paused' || t.pause !== undefined) &&
      (s !== 'connections-killed' || t.dropConnections !== undefined),
  );
}

/**
 * The shared scenarios `runFaults` registers for `suite`: its selection, or every applicable one.
 * Throws when the selection names a scenario whose fault the target cannot inject.
 */
export function selectedScenarios(
  suite: Pick<FaultSuiteTarget, 'name' | 'restart' | 'pause' | 'dropConnections' | 'scenarios'>,
): SharedScenario[] {
  const applicable = applicableScenarios(suite);
  const selected = suite.scenarios ?? applicable;
  const notApplicable = selected.filter((s) => !applicable.includes(s));
  if (notApplicable.length > 0) {
    throw new Error(`faults[${suite.name}]: selected scenarios ${notApplicable.join(', ')} need a fault the target does not provide`);
  }
  return applicable.filter((s) => selected.includes(s));
}

/** Registers the fault suite for `suite` (vitest `describe`/`it`), as `faults[<name>]`. */
export function runFaults(suite: FaultSuiteTarget): void {
  const want = new Set(selectedScenarios(suite));
  let target: FaultTarget | undefined;
  let env: FaultEnv | undefined;
  const ready = (): { target: FaultTarget; env: FaultEnv } => {
    if (!target || !env) throw new Error(`faults[${suite.name}]: the suite's setUp did not complete`);
    return { target, env };
  };

  describe.skipIf(!suite.available)(`faults[${suite.name}]`, () => {
    beforeAll(async () => {
      if (!suite.effectsUrl) throw new Error(`faults[${suite.name}]: no effects Redis`);
      const { Redis: IORedis } = await import('ioredis');
      const effects: Redis = new IORedis(suite.effectsUrl, { maxRetriesPerRequest: 3 });
      env = { effects, effectsUrl: suite.effectsUrl };
      target = await suite.setUp();
    }, suite.hookTimeoutMs ?? 60_000);

    afterAll(async () => {
      await env?.effects.quit().catch(() => {});
      await suite.tearDown();
    }, suite.hookTimeoutMs ?? 60_000);

    if (suite.beforeEachScenario) {
      const each = suite.beforeEachScenario.bind(suite);
      beforeEach(() => each(), suite.beforeEachTimeoutMs ?? 180_000);
    }

    const later: (() => void)[] = [];
    const register = (scenario: SharedScenario, title: string, fn: (t: FaultTarget, e: FaultEnv) => Promise<void>, last = false) => {
      if (!want.has(scenario)) return;
      const add = () =>
        it(title, () => {
          const r = ready();
          return fn(r.target, r.env);
        });
      if (last) later.push(add);
      else add();
    };

    register('consumer-kill', '1. consumer killed (kill -9) mid-handler / after the effect / after the commit', consumerKilled);
    const { restart, dropConnections, pause } = suite;
    // Closing connections disrupts less than a restart: when both run last, it goes first.
    if (dropConnections) {
      register(
        'connections-killed',
        dropConnections.title ?? `3. connections closed by the broker (${dropConnections.how})`,
        (t, e) =>
          faultUnderLoad(
            t,
            e,
            droppedConnections(() => dropConnections.drop(), dropConnections.how),
          ),
        dropConnections.last,
      );
    }
    if (restart) {
      register(
        'broker-restart',
        restart.title ?? `2. broker restarted (${restart.how})`,
        (t, e) =>
          faultUnderLoad(
            t,
            e,
            restartedBroker(() => restart.restart(), restart.how),
          ),
        restart.last,
      );
    }
    for (const fault of ['proxy-cut', 'proxy-reset', 'proxy-blackhole', 'proxy-half-open'] as const) {
      register(fault, `3. link fault through the proxy: ${fault}`, (t, e) => {
        const f = proxyFaults(t).find((x) => x.name === fault);
        if (!f) throw new Error(`no fault ${fault}`);
        return faultUnderLoad(t, e, f);
      });
    }
    register(
      'blackhole-detection',
      `3. link black-holed under load, transport defaults: left 'connected' within ${DETECTION_BOUND_MS / 1000} s, publishes fail fast, recovers`,
      (t, e) => faultUnderLoad(t, e, blackholeDetection(t)),
    );
    register(
      'subscribe-link-reset',
      '3. link reset during subscribe: resolves and receives, or rejects with a retryable BusError and a retry succeeds',
      subscribeLinkReset,
    );
    if (pause) {
      register('broker-paused', '3b. broker paused (SIGSTOP ~10 s, SIGCONT)', (t, e) =>
        faultUnderLoad(
          t,
          e,
          pausedBroker(
            () => pause.pause(),
            () => pause.resume(),
          ),
        ),
      );
    }
    register(
      'down-at-start',
      '4. broker down at start: ready() rejects with the endpoint, publishes fail fast, recovers',
      brokerDownAtStart,
    );
    register('slow-consumer', '5. slow consumer: heap flat from backlog N to 2N, concurrency kept, publisher backpressure', slowConsumer);
    register('hostile-input', '6. hostile input written below the bus is dead-lettered with its reason', hostileInput);
    register(
      'dead-letter-failing',
      '7. dead-letter destination failing: not acknowledged, comes back, both errors reported',
      deadLetterFailing,
    );
    register('secrets', '8. secrets appear in no error, log line or dead letter', secrets);
    suite.specific?.({ target: () => ready().target, env: () => ready().env });
    // Faults that disrupt a broker other suites share run after everything else.
    for (const add of later) add();
  });
}
