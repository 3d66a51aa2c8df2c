// reshape: keeps, renames or drops fields of JSON objects, one per line, read from stdin.
//
// An AU in JavaScript, built to a WASI component by componentize-js against the
// agenix:au/unit world (see aus/lang/README.md). Standard input, arguments and the exit code
// come from the WASI interfaces the world grants.

import { getArguments } from 'wasi:cli/environment@0.2.12';
import { exitWithCode } from 'wasi:cli/exit@0.2.12';
import { getStdin } from 'wasi:cli/stdin@0.2.12';
import { getStdout } from 'wasi:cli/stdout@0.2.12';
import { getStderr } from 'wasi:cli/stderr@0.2.12';

const NAME = 'reshape';
const VERSION = '0.1.0';
const USAGE = 'reshape [--drop] FIELD[=NEW]...';
const CARD = {
  schema: 'agenix.au.card/v1',
  name: NAME,
  version: VERSION,
  description:
    'Reshape JSON Lines: keep the named fields (a.b reaches into nested objects), renaming ' +
    'FIELD=NEW, in the order given; a missing field is null. With --drop, remove them instead. ' +
    'Numbers are IEEE doubles, as JavaScript reads them.',
  capabilities: ['stdin', 'stdout'],
  inputs: ['application/jsonl'],
  outputs: ['application/jsonl'],
  args: [
    { flag: 'FIELD[=NEW]', description: 'a field to keep (dotted path), optionally renamed' },
    { flag: '--drop', description: 'remove the named fields, keep the rest' },
  ],
  usage: USAGE,
  exit_codes: {
    0: 'ok',
    1: 'reading stdin failed',
    2: 'bad usage, or a line that is not a JSON object (named by its number)',
  },
  mounts: [],
};

class Usage extends Error {}

const encoder = new TextEncoder();

function write(stream, text) {
  const bytes = encoder.encode(text);
  for (let at = 0; at < bytes.length; at += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
  }
}

function readStdin() {
  const input = getStdin();
  const chunks = [];
  let total = 0;
  for (;;) {
    let chunk;
    try {
      chunk = input.blockingRead(65536n);
    } catch (e) {
      if (e && e.payload && e.payload.tag === 'closed') break;
      throw e;
    }
    chunks.push(chunk);
    total += chunk.length;
  }
  const all = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder('utf-8', { fatal: true }).decode(all);
}

function parseArgs(args) {
  let drop = false;
  const fields = [];
  for (const a of args) {
    if (a === '--drop') {
      drop = true;
      continue;
    }
    if (a.startsWith('-')) throw new Usage(`unknown flag ${JSON.stringify(a)}`);
    const [path, rename] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, a];
    const parts = path.split('.');
    if (parts.some((p) => p === '') || rename === '') throw new Usage(`bad field ${JSON.stringify(a)}`);
    fields.push({ parts, rename });
  }
  if (fields.length === 0) throw new Usage('name at least one field');
  if (drop && fields.some((f) => f.rename !== f.parts.join('.'))) throw new Usage('--drop takes no renames');
  return { drop, fields };
}

const own = (o, k) => o !== null && typeof o === 'object' && !Array.isArray(o) && Object.hasOwn(o, k);

function get(obj, parts) {
  let v = obj;
  for (const p of parts) {
    if (!own(v, p)) return null;
    v = v[p];
  }
  return v;
}

function remove(obj, parts) {
  let v = obj;
  for (const p of parts.slice(0, -1)) {
    if (!own(v, p)) return;
    v = v[p];
  }
  if (own(v, parts[parts.length - 1])) delete v[parts[parts.length - 1]];
}

class NotObject extends Error {}

/** One line's value, reshaped, as JSON text. */
function reshape(obj, spec) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new NotObject('not a JSON object');
  }
  if (spec.drop) {
    for (const f of spec.fields) remove(obj, f.parts);
    return JSON.stringify(obj);
  }
  // No prototype: a field named `__proto__` is a field like any other.
  const shaped = Object.create(null);
  for (const f of spec.fields) shaped[f.rename] = get(obj, f.parts);
  return JSON.stringify(shaped);
}

function main(args) {
  const out = getStdout();
  const err = getStderr();
  if (args[0] === '--describe') {
    write(out, JSON.stringify(CARD) + '\n');
    return 0;
  }
  if (args[0] === '--help' || args[0] === '-h') {
    write(out, `${NAME} ${VERSION} - ${CARD.description}\nusage: ${USAGE}\n`);
    return 0;
  }
  let spec;
  try {
    spec = parseArgs(args);
  } catch (e) {
    if (!(e instanceof Usage)) throw e;
    write(err, `${NAME}: ${e.message}\nusage: ${USAGE}\n`);
    return 2;
  }
  let text;
  try {
    text = readStdin();
  } catch (e) {
    const what = e instanceof TypeError ? 'stdin is not valid UTF-8' : `cannot read stdin: ${e}`;
    write(err, `${NAME}: ${what}\n`);
    return e instanceof TypeError ? 2 : 1;
  }
  const lines = text.split('\n');
  let result = '';
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    // Any failure on a line (not JSON, nested past what the engine's stack allows) names
    // it; what came before it is written.
    let shaped;
    try {
      shaped = reshape(JSON.parse(line), spec);
    } catch (e) {
      write(out, result);
      write(err, `${NAME}: line ${i + 1}: ${e instanceof SyntaxError ? 'not JSON: ' : ''}${e.message}\n`);
      return 2;
    }
    result += shaped + '\n';
    if (result.length >= 65536) {
      write(out, result);
      result = '';
    }
  }
  write(out, result);
  return 0;
}

export const run = {
  run() {
    let code;
    try {
      code = main(getArguments().slice(1));
    } catch (e) {
      write(getStderr(), `${NAME}: ${e}\n`);
      code = 1;
    }
    exitWithCode(code);
  },
};
