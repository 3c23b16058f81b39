// {{name}}: a setpoint drift comparator, in JavaScript.
//
// It reports every top-level field of the desired configuration that the actual one
// lacks (`added`), has with another value (`changed`) or has in excess (`removed`),
// except the fields named in the `ignore` parameter. Two configurations that are not
// both JSON objects are compared whole.
//
// Parameters (a JSON object, from the policy rule that picks this comparator):
// `ignore`, a list of top-level field names to skip (default: none). Names starting with
// `$` are the host's; any other parameter is refused, so a typo does not go unnoticed.
//
// Start here: change compare() below. README.md says how to build the component and try
// it with `setpoint plugins check` and `setpoint plugins run`.
//
// How WIT values look in JavaScript (componentize-js): interface names and record fields
// are camelCase (`drift-comparator` is `driftComparator`, `group-rollouts` is
// `groupRollouts`); enums are their WIT names as strings; `option<string>` is a string
// or `undefined`. The `err` case of compare's `result` is thrown: an exception with a
// `payload` (a `plugin-error` variant, `{ tag, val }`) reaches the host as that error.
// Any other exception traps the component, and the host reports the trap: catch what you
// expect.

import { log } from 'setpoint:plugin/logging@0.2.0';

const NAME = '{{name}}';
const VERSION = '0.1.0';

export const driftComparator = {
  metadata() {
    return {
      name: NAME,
      version: VERSION,
      kind: 'comparator',
      description: 'Reports the top-level fields that differ, except those in `ignore`',
      groupRollouts: false,
    };
  },

  // desiredText, actualText, paramsText: JSON texts. Returns a list of drifts; an empty
  // list means no drift.
  compare(desiredText, actualText, paramsText) {
    const ignore = ignoredFields(parse('invalid-params', 'params', paramsText));
    const desired = parse('invalid-input', 'the desired configuration', desiredText);
    const actual = parse('invalid-input', 'the actual configuration', actualText);

    if (!isObject(desired) || !isObject(actual)) {
      return sameJson(desired, actual) ? [] : [drift('', 'changed', desired, actual)];
    }
    const drifts = [];
    for (const [key, want] of Object.entries(desired)) {
      if (ignore.includes(key)) continue;
      if (!Object.hasOwn(actual, key)) {
        drifts.push(drift(pointer(key), 'added', want, undefined));
      } else if (!sameJson(want, actual[key])) {
        drifts.push(drift(pointer(key), 'changed', want, actual[key]));
      }
    }
    for (const [key, have] of Object.entries(actual)) {
      if (!Object.hasOwn(desired, key) && !ignore.includes(key)) {
        drifts.push(drift(pointer(key), 'removed', undefined, have));
      }
    }
    if (drifts.length > 0) {
      log('debug', `${drifts.length} drift(s): ${drifts.map((d) => d.path).join(', ')}`);
    }
    return drifts;
  },
};

// One `drift` record; `desired` and `actual` are parsed JSON values, `undefined` for a
// missing side. The message reads `<path>: <actual> -> <desired>`.
function drift(path, kind, desired, actual) {
  const desiredText = desired === undefined ? undefined : JSON.stringify(desired);
  const actualText = actual === undefined ? undefined : JSON.stringify(actual);
  return {
    path,
    kind,
    desired: desiredText,
    actual: actualText,
    message: `${path}: ${actualText ?? '(absent)'} -> ${desiredText ?? '(absent)'}`,
  };
}

// The JSON pointer (RFC 6901) of a top-level field.
function pointer(key) {
  return `/${key.replaceAll('~', '~0').replaceAll('/', '~1')}`;
}

// Deep equality of two parsed JSON values; the order of an object's keys does not matter.
function sameJson(a, b) {
  if (a === b) return true;
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length &&
      a.every((item, i) => sameJson(item, b[i]));
  }
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length &&
      keys.every((key) => Object.hasOwn(b, key) && sameJson(a[key], b[key]));
  }
  return false;
}

function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// The `ignore` parameter: a list of field names, or nothing.
function ignoredFields(params) {
  if (!isObject(params)) {
    throw pluginError('invalid-params', 'params must be a JSON object');
  }
  for (const name of Object.keys(params)) {
    if (name !== 'ignore' && !name.startsWith('$')) {
      throw pluginError('invalid-params', `unknown parameter \`${name}\`; ${NAME} accepts \`ignore\``);
    }
  }
  const ignore = params.ignore ?? [];
  if (!Array.isArray(ignore) || !ignore.every((name) => typeof name === 'string')) {
    throw pluginError('invalid-params', 'parameter `ignore` must be a list of field names (strings)');
  }
  return ignore;
}

function parse(tag, what, text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw pluginError(tag, `${what} is not JSON: ${e.message}`);
  }
}

// The `err` case of compare's result: a `plugin-error` (`invalid-input`,
// `invalid-params` or `other`), carried as the exception's `payload`.
function pluginError(tag, message) {
  const error = new Error(message);
  error.payload = { tag, val: message };
  return error;
}
