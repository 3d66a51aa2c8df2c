// {{name}}: an AGEniX AU in JavaScript. It reads stdin and writes stdout; diagnostics go to
// stderr.
//
// The AU contract: exit 0 ok, 1 failure, 2 bad input or usage, 3+ your own meanings;
// `{{name}} --describe` prints the model card below. Standard input, arguments and the exit
// code come from the WASI interfaces the agenix:au/unit world grants.

import { getArguments } from 'wasi:cli/environment@0.2.12';
import { exitWithCode } from 'wasi:cli/exit@0.2.12';
import { getStdin } from 'wasi:cli/stdin@0.2.12';
import { getStdout } from 'wasi:cli/stdout@0.2.12';
import { getStderr } from 'wasi:cli/stderr@0.2.12';

const USAGE = '{{name}} [--lower]';
// The model card (schema agenix.au.card/v1): keep it in step with what the AU does.
const CARD = {
  schema: 'agenix.au.card/v1',
  name: '{{name}}',
  version: '0.1.0',
  description: 'Uppercases its input (lowercases it with --lower)',
  capabilities: ['stdin', 'stdout'],
  inputs: ['text/plain'],
  outputs: ['text/plain'],
  args: [{ flag: '--lower', description: 'lowercase instead of uppercase' }],
  usage: USAGE,
  exit_codes: { 0: 'ok', 1: 'failure', 2: 'bad input or usage' },
  mounts: [],
};

function write(stream, text) {
  const bytes = new TextEncoder().encode(text);
  for (let at = 0; at < bytes.length; at += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
  }
}

/** All of stdin, as bytes. */
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
  return all;
}

function main(args) {
  let lower = false;
  for (const arg of args) {
    if (arg === '--describe') {
      write(getStdout(), JSON.stringify(CARD) + '\n');
      return 0;
    } else if (arg === '--lower') {
      lower = true;
    } else {
      write(getStderr(), `{{name}}: unknown argument ${JSON.stringify(arg)}\nusage: ${USAGE}\n`);
      return 2;
    }
  }
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(readStdin());
  } catch (e) {
    write(getStderr(), `{{name}}: ${e instanceof TypeError ? 'input is not UTF-8' : e}\n`);
    return e instanceof TypeError ? 2 : 1;
  }
  write(getStdout(), lower ? text.toLowerCase() : text.toUpperCase());
  return 0;
}

export const run = {
  run() {
    let code;
    try {
      code = main(getArguments().slice(1));
    } catch (e) {
      write(getStderr(), `{{name}}: ${e}\n`);
      code = 1;
    }
    exitWithCode(code);
  },
};
