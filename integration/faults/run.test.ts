// runFaults' scenario selection (lib/run.ts), without a broker: which shared scenarios a target
// gets from the faults it can inject, and that a selection naming one it cannot inject fails.
import { describe, expect, it } from 'vitest';
import { SHARED_SCENARIOS, selectedScenarios } from './lib/run.js';

const restart = { how: 'restart', restart: async () => {} };
const dropConnections = { how: 'drop', drop: async () => undefined };
const pause = { pause: () => {}, resume: () => {} };

describe('runFaults scenario selection', () => {
  it('a target with every broker fault gets every shared scenario, in the shared order', () => {
    expect(selectedScenarios({ name: 'redis-streams', restart, dropConnections, pause })).toEqual([...SHARED_SCENARIOS]);
  });

  it('a broker-level scenario applies only where the target can inject its fault', () => {
    const rabbit = selectedScenarios({ name: 'rabbitmq', restart, dropConnections });
    expect(rabbit).not.toContain('broker-paused');
    expect(rabbit).toHaveLength(SHARED_SCENARIOS.length - 1);
    const kafka = selectedScenarios({ name: 'kafka', restart, pause });
    expect(kafka).not.toContain('connections-killed');
    const bare = selectedScenarios({ name: 'kafka' });
    expect(bare).toEqual(SHARED_SCENARIOS.filter((s) => !['broker-restart', 'broker-paused', 'connections-killed'].includes(s)));
  });

  it('a selection narrows the set and keeps the shared order', () => {
    expect(selectedScenarios({ name: 'kafka', restart, pause, scenarios: ['secrets', 'consumer-kill', 'broker-paused'] })).toEqual([
      'consumer-kill',
      'broker-paused',
      'secrets',
    ]);
  });

  it('selecting a scenario whose fault the target cannot inject is an error, not a skip', () => {
    expect(() => selectedScenarios({ name: 'rabbitmq', restart, scenarios: ['consumer-kill', 'broker-paused'] })).toThrow(
      /broker-paused need a fault the target does not provide/,
    );
  });
});
