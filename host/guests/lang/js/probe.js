// The JavaScript probe for the sandbox's tests (host/tests/lang.rs): one behaviour per mode,
// named by the first argument. Built by scripts/build-lang-aus.sh; never part of the product.
//
//   fetch URL   fetch(URL); prints the outcome
//   exit N      exits with N (through wasi:cli/exit.exit-with-code)
//   spin        loops forever
//   grow        allocates 1 MiB at a time, forever
//   throw       throws an exception nothing catches

import { getArguments } from 'wasi:cli/environment@0.2.12';
import { exitWithCode } from 'wasi:cli/exit@0.2.12';

export const run = {
  async run() {
    const [mode, ...rest] = getArguments().slice(1);
    if (mode === 'fetch') {
      try {
        const r = await fetch(rest[0]);
        console.log(`fetch: OPEN ${r.status}`);
      } catch (e) {
        console.log(`fetch: ${e}`);
      }
    } else if (mode === 'exit') {
      exitWithCode(Number(rest[0]));
    } else if (mode === 'spin') {
      for (;;) {}
    } else if (mode === 'grow') {
      const hoard = [];
      for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
    } else if (mode === 'throw') {
      throw new Error('the probe threw');
    }
  },
};
