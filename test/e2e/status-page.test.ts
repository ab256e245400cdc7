import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type AdminApi, startAdminApi } from '../../cloud-hub/admin-api.js';
import { quietLogger } from '../../shared/logger.js';
import { type Chain, removePki, startChain } from '../support/chain.js';
import { CHROMIUM_ARGS, CHROMIUM_PATH, describeWithChromium } from '../support/chromium.js';

const TOKEN = 'status-page-test-token-0123456789';

describeWithChromium('status page in headless Chromium', () => {
  const dir = mkdtempSync(join(tmpdir(), 'edgemux-status-page-'));
  let chain: Chain;
  let admin: AdminApi;
  let browser: BrowserContext;
  let page: Page;
  let publishing: NodeJS.Timeout | undefined;

  beforeAll(async () => {
    chain = await startChain();
    admin = await startAdminApi({ host: '127.0.0.1', port: 0, token: TOKEN, hub: chain.hub, log: quietLogger('admin') });
    // A fresh profile per run: nothing carried over from another test or user.
    browser = await chromium.launchPersistentContext(join(dir, 'profile'), { executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
    page = await browser.newPage();
  }, 60_000);

  afterAll(async () => {
    clearInterval(publishing);
    await browser?.close();
    await admin?.close();
    await chain?.close();
    await removePki();
    // The screenshot stays for a person to look at; the browser profile goes.
    rmSync(join(dir, 'profile'), { recursive: true, force: true });
  });

  const chartPixels = (): Promise<string> => page.$eval('#rate-chart', (canvas) => (canvas as HTMLCanvasElement).toDataURL());

  it('asks for the token, then shows the device a test connected and a chart that moves', async () => {
    const base = `http://127.0.0.1:${admin.address.port}/`;
    const apiCalls: { url: string; authorized: boolean }[] = [];
    page.on('request', (request) => {
      if (request.url().includes('/api/')) apiCalls.push({ url: request.url(), authorized: request.headers().authorization === `Bearer ${TOKEN}` });
    });
    await page.goto(base);
    await page.waitForSelector('#login:not([hidden])');
    expect(apiCalls).toEqual([]);

    await page.fill('#token', 'not-the-token-at-all');
    await page.click('#login button[type=submit]');
    await page.waitForFunction(() => document.getElementById('login-error')!.textContent === 'The hub refused this token.');

    const device = await chain.device({ clientId: 'page-device-1' });
    await chain.device({ clientId: 'page-device-2' });
    publishing = setInterval(() => device.publish('telemetry/page-device-1', 'x'.repeat(32)), 20);

    await page.fill('#token', TOKEN);
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#devices tr[data-client-id="page-device-1"]', { timeout: 10_000 });
    const row = await page.textContent('#devices tr[data-client-id="page-device-1"]');
    expect(row).toContain('agent-1');
    expect(row).toContain('embedded');
    expect(await page.textContent('#agents tbody')).toMatch(/agent-1.*tls 127\.0\.0\.1:\d+/s);
    expect(await page.evaluate(() => sessionStorage.getItem('edgemux-admin-token'))).toBe(TOKEN);

    // Two points make a line; the chart gains one a second while the device publishes.
    await page.waitForFunction(() => Number(document.getElementById('rate-up')!.textContent) > 10, undefined, { timeout: 10_000 });
    const before = await chartPixels();
    await page.waitForTimeout(2500);
    const after = await chartPixels();
    expect(after).not.toBe(before);
    expect(Number(await page.textContent('#rate-up'))).toBeGreaterThan(10);

    await page.fill('#search', 'device-2');
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('#devices tbody tr')].map((tr) => (tr as HTMLElement).dataset.clientId);
      return rows.length === 1 && rows[0] === 'page-device-2';
    });
    expect(await page.textContent('#devices-total')).toBe('1 matching');

    const screenshot = join(dir, 'status-page.png');
    await page.screenshot({ path: screenshot, fullPage: true });
    process.stdout.write(`status page screenshot: ${screenshot}\n`);
    expect(apiCalls.filter((call) => !call.authorized).every((call) => call.url.includes('/api/v1/'))).toBe(true);
  }, 60_000);
});
