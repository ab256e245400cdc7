import { accessSync, constants } from 'node:fs';
import { describe } from 'vitest';

/** Debian's chromium package; tests never download a browser. */
export const CHROMIUM_PATH = '/usr/bin/chromium';

/** Set by CI, where a skipped browser test would hide a broken install. */
export const CHROMIUM_REQUIRED = process.env.EDGEMUX_REQUIRE_CHROMIUM === '1';

/**
 * What headless Chromium needs to run as root in a container, and to stay
 * off the network: no sandbox (it refuses root), no GPU, no updates, sync or
 * first-run pages.
 */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--headless',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

function chromiumPresent(): boolean {
  try {
    accessSync(CHROMIUM_PATH, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** `describe` for suites that drive a real headless Chromium: skipped with a how-to line when it is absent, a failure where CI demands it. */
export function describeWithChromium(name: string, body: () => void): void {
  if (chromiumPresent()) {
    describe(name, body);
    return;
  }
  if (CHROMIUM_REQUIRED) throw new Error(`EDGEMUX_REQUIRE_CHROMIUM=1 but ${CHROMIUM_PATH} is missing`);
  process.stderr.write(`skipping the browser tests: ${CHROMIUM_PATH} not found (enable them with: apt-get install chromium)\n`);
  describe.skip(name, body);
}
