// {{name}}: a setpoint rollout strategy, in JavaScript.
//
// It stops the instance, starts it with the desired configuration, and is done once the
// instance reports healthy; it fails (retryably) when that takes longer than the
// `timeout` parameter. Its abort puts back the configuration the instance ran before.
//
// Parameters (a JSON object, from the policy rule that picks this strategy): `timeout`,
// how long to wait for health, as "500ms", "30s", "2m" or a number of milliseconds
// (default "30s"). Names starting with `$` are the host's and are ignored here; any other
// parameter is refused, so a typo does not go unnoticed.
//
// A strategy never blocks and has no clock: the host calls step() again after the delay
// a `requeue` asks for, with the state it returned, and tells it how long the rollout has
// run (`elapsedMs`). The same step may be called again after a crash, so each step must
// be safe to repeat. It rolls out one instance at a time (`groupRollouts: false`).
//
// It calls only the control plane's `instances` interface, which every control plane
// offers; wit/world.wit imports nothing else. To clone instances, move traffic or read
// metrics, import `clones`, `traffic` or `metrics` there as well as here.
//
// Start here: change step() below. README.md says how to build the component and try it
// with `setpoint plugins check` and `setpoint plugins run`.
//
// How WIT values look in JavaScript (componentize-js): interface names and record fields
// are camelCase (`rollout-strategy` is `rolloutStrategy`, `instance-id` is `instanceId`);
// enums are their WIT names as strings; `option<string>` is a string or `undefined`;
// `u64` is a BigInt (`elapsedMs`, `afterMs`); a variant such as `progress` is
// `{ tag, val }`. A control-plane call that fails throws an exception whose `payload` is
// the contract's `error` variant (`{ tag: 'not-found', val: '...' }`). An exception that
// escapes step() or abort() traps the component, and the host reports the trap: catch
// what you expect.

import { log } from 'setpoint:plugin/logging@0.2.0';
import { probeHealth, start, stop } from 'setpoint:plugin/instances@0.2.0';

const NAME = '{{name}}';
const VERSION = '0.1.0';
// How often to ask for health while waiting, in milliseconds.
const POLL_MS = 500;
// How long to wait for health unless the `timeout` parameter says otherwise.
const DEFAULT_TIMEOUT = '30s';

export const rolloutStrategy = {
  metadata() {
    return {
      name: NAME,
      version: VERSION,
      kind: 'strategy',
      description: 'Stops the instance, starts it with the desired configuration, waits for health',
      groupRollouts: false,
    };
  },

  // Take the next step of `rollout`; return a `progress`.
  step(rollout) {
    let timeoutMs;
    try {
      timeoutMs = timeoutParam(rollout.params);
    } catch (e) {
      // Bad parameters will not get better by retrying.
      return failed(e.message, false);
    }
    const member = rollout.members[0];
    const id = member.instanceId;

    // First step (no state yet): restart the instance with the desired configuration.
    if (rollout.state === undefined) {
      try {
        stop(id);
        start(id, member.desired);
      } catch (e) {
        return failed(`restarting ${id}: ${describe(e)}`, true);
      }
      log('info', `started ${id} with its desired configuration`);
      return requeue(POLL_MS, JSON.stringify({ started: true }),
        `started ${id}; waiting for it to report healthy`);
    }

    // Later steps: wait for health.
    let health;
    try {
      health = probeHealth(id);
    } catch (e) {
      return failed(`probing ${id}: ${describe(e)}`, true);
    }
    if (health.healthy) {
      return { tag: 'done', val: `${id} runs the desired configuration and is healthy` };
    }
    if (Number(rollout.elapsedMs) >= timeoutMs) {
      return failed(`${id} not healthy within ${timeoutMs} ms: ${health.detail}`, true);
    }
    return requeue(POLL_MS, rollout.state, `waiting for ${id} to report healthy: ${health.detail}`);
  },

  // Undo the rollout: start the instance again with what it ran before, when the host
  // knows it.
  abort(rollout) {
    const member = rollout.members[0];
    const id = member.instanceId;
    if (member.actual === undefined) {
      return { tag: 'done', val: 'nothing to undo: the previous configuration is unknown' };
    }
    try {
      stop(id);
      start(id, member.actual);
    } catch (e) {
      return failed(`restoring ${id}: ${describe(e)}`, true);
    }
    return { tag: 'done', val: `${id} restarted with its previous configuration` };
  },
};

function requeue(afterMs, state, message) {
  return { tag: 'requeue', val: { afterMs: BigInt(afterMs), state, message } };
}

function failed(reason, retryable) {
  return { tag: 'failed', val: { reason, retryable } };
}

// What a failed control-plane call says: its `error` variant, or the exception's message.
function describe(e) {
  return e?.payload?.tag ? `${e.payload.tag}: ${e.payload.val}` : String(e?.message ?? e);
}

// The `timeout` parameter in milliseconds; throws an Error saying what is wrong.
function timeoutParam(paramsText) {
  let params;
  try {
    params = JSON.parse(paramsText);
  } catch (e) {
    throw new Error(`params are not JSON: ${e.message}`);
  }
  if (typeof params !== 'object' || params === null || Array.isArray(params)) {
    throw new Error('params must be a JSON object');
  }
  for (const name of Object.keys(params)) {
    if (name !== 'timeout' && !name.startsWith('$')) {
      throw new Error(`unknown parameter \`${name}\`; ${NAME} accepts \`timeout\``);
    }
  }
  const timeout = params.timeout ?? DEFAULT_TIMEOUT;
  if (typeof timeout === 'number' && Number.isFinite(timeout) && timeout >= 0) {
    return timeout;
  }
  const match = typeof timeout === 'string' && /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(timeout);
  if (!match) {
    throw new Error(
      `parameter \`timeout\` must be a duration such as "500ms", "30s" or "2m", or a number of milliseconds; got ${JSON.stringify(timeout)}`);
  }
  return Number(match[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2]];
}
