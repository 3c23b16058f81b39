// js-comparator: a setpoint drift comparator written in JavaScript.
//
// It implements the `comparator` world of `wit/setpoint.wit` (setpoint:plugin@0.2.0):
// it exports the `drift-comparator` interface below and imports only `logging`.
// componentize-js turns this module into a WebAssembly component (see build.mjs).
//
// The rules:
//
// - Both configurations must be JSON objects. They are compared key by key: a key only
//   in the desired one is `added`, only in the actual one `removed`, in both with
//   different values `changed`. Nested objects are compared the same way, key by key;
//   any other value (a list, a string, a number...) is compared whole.
// - Numbers compare by value (`8080` equals `8080.0`); key order never matters.
// - Paths are JSON pointers (RFC 6901): `/env/LOG_LEVEL`, with `~` and `/` in a key
//   written `~0` and `~1`.
// - Messages read `<path> <kind>: <actual> -> <desired>`, values as compact JSON cut at
//   64 characters, `(absent)` for a missing side.
//
// Parameters (a JSON object, all optional):
//
// - `ignore`: a list of JSON pointers. A drift is dropped when one of them is its path
//   or an ancestor of it, token by token: `/env` ignores `/env/DEBUG`, not `/envoy`.
//
// Any other parameter is rejected (so a typo does not silently compare everything),
// except names starting with `$`, which the host reserves for itself.
//
// How values cross the boundary (componentize-js's mapping of the WIT types):
// records are objects with camelCase fields, enums are their WIT names as strings,
// `option<string>` is a string or `undefined`, and the `err` case of a `result` is
// thrown as an error carrying a `payload` (a variant: `{ tag, val }`). Any other
// exception traps the component, and the host reports the trap.

import { log } from 'setpoint:plugin/logging@0.2.0';

const NAME = 'js-comparator';
const VERSION = '0.1.0';
const ABSENT = '(absent)';
const MAX_RENDERED = 64;

export const driftComparator = {
  metadata() {
    return {
      name: NAME,
      version: VERSION,
      kind: 'comparator',
      description: 'JSON objects compared key by key, with ignore paths (JavaScript example)',
      groupRollouts: false,
    };
  },

  compare(desiredText, actualText, paramsText) {
    const params = parseParams(paramsText);
    const desired = parseObject('desired', desiredText);
    const actual = parseObject('actual', actualText);

    const drifts = [];
    diffObjects('', desired, actual, params.ignore, drifts);
    if (drifts.length > 0) {
      log('debug', `${drifts.length} drift(s): ${drifts.map((d) => d.path).join(', ')}`);
    }
    return drifts;
  },
};

// ---- comparing ----------------------------------------------------------------------

// Push onto `drifts` how `actual` differs from `desired`, two objects at `path`.
function diffObjects(path, desired, actual, ignore, drifts) {
  for (const key of Object.keys(desired)) {
    const at = `${path}/${escapeToken(key)}`;
    if (ignored(at, ignore)) continue;
    if (!Object.hasOwn(actual, key)) {
      drifts.push(drift(at, 'added', desired[key], undefined));
    } else if (isObject(desired[key]) && isObject(actual[key])) {
      diffObjects(at, desired[key], actual[key], ignore, drifts);
    } else if (!sameJson(desired[key], actual[key])) {
      drifts.push(drift(at, 'changed', desired[key], actual[key]));
    }
  }
  for (const key of Object.keys(actual)) {
    const at = `${path}/${escapeToken(key)}`;
    if (!Object.hasOwn(desired, key) && !ignored(at, ignore)) {
      drifts.push(drift(at, 'removed', undefined, actual[key]));
    }
  }
}

// One `drift` record of the contract; `desired` and `actual` are JSON values or
// `undefined` for a missing side.
function drift(path, kind, desired, actual) {
  const desiredText = desired === undefined ? undefined : JSON.stringify(desired);
  const actualText = actual === undefined ? undefined : JSON.stringify(actual);
  return {
    path,
    kind,
    desired: desiredText,
    actual: actualText,
    message: `${path} ${kind}: ${render(actualText)} -> ${render(desiredText)}`,
  };
}

// Deep equality of two parsed JSON values; object key order does not matter.
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

function render(text) {
  if (text === undefined) return ABSENT;
  return text.length > MAX_RENDERED ? `${text.slice(0, MAX_RENDERED)}…` : text;
}

// ---- JSON pointers ------------------------------------------------------------------

function escapeToken(key) {
  return key.replaceAll('~', '~0').replaceAll('/', '~1');
}

function isPointer(text) {
  return text === '' || (text.startsWith('/') && !/~[^01]|~$/.test(text));
}

// Whether `path` is one of the `ignore` pointers or lies under one, token by token.
function ignored(path, ignore) {
  return ignore.some((prefix) => path === prefix || path.startsWith(`${prefix}/`) || prefix === '');
}

// ---- inputs -------------------------------------------------------------------------

function parseObject(which, text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw pluginError('invalid-input', `the ${which} configuration is not JSON: ${e.message}`);
  }
  if (!isObject(value)) {
    throw pluginError('invalid-input', `the ${which} configuration must be a JSON object, got ${render(text)}`);
  }
  return value;
}

function parseParams(text) {
  let params;
  try {
    params = JSON.parse(text);
  } catch (e) {
    throw pluginError('invalid-params', `params are not JSON: ${e.message}`);
  }
  if (!isObject(params)) {
    throw pluginError('invalid-params', `params must be a JSON object, got ${render(text)}`);
  }
  const ignore = params.ignore ?? [];
  if (!Array.isArray(ignore) || !ignore.every((p) => typeof p === 'string')) {
    throw pluginError('invalid-params',
      `parameter \`ignore\` must be a list of JSON pointers such as ["/env"], got ${render(JSON.stringify(ignore))}`);
  }
  for (const pointer of ignore) {
    if (!isPointer(pointer)) {
      throw pluginError('invalid-params',
        `parameter \`ignore\`: ${JSON.stringify(pointer)} is not a JSON pointer (it must be empty or start with \`/\`, and \`~\` must be followed by 0 or 1)`);
    }
  }
  for (const name of Object.keys(params)) {
    if (name !== 'ignore' && !name.startsWith('$')) {
      throw pluginError('invalid-params', `unknown parameter \`${name}\`; ${NAME} accepts \`ignore\``);
    }
  }
  return { ignore };
}

// The `err` case of `compare`'s result: a `plugin-error` variant, carried as `payload`.
function pluginError(tag, message) {
  const error = new Error(message);
  error.payload = { tag, val: message };
  return error;
}
