import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ARPHRD_NONE, isTunnelLink } from '../../src/os/netmon';

/** Which links are another tunnel's, read from a made-up /sys/class/net. */
describe('netmon: tunnel links', () => {
  const sysfs = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-sysfs-'));
  const link = (name: string, type: string): void => {
    fs.mkdirSync(path.join(sysfs, name));
    fs.writeFileSync(path.join(sysfs, name, 'type'), type);
  };
  link('tun0', `${ARPHRD_NONE}\n`); // a TUN device or a WireGuard link
  link('eth0', '1\n'); // ARPHRD_ETHER
  link('ppp0', '512\n'); // ARPHRD_PPP: a real uplink on some sites, kept
  link('odd', 'not a number\n');
  afterAll(() => fs.rmSync(sysfs, { recursive: true, force: true }));

  it('is a tunnel link only when the kernel says ARPHRD_NONE', () => {
    expect(isTunnelLink('tun0', sysfs)).toBe(true);
    expect(isTunnelLink('eth0', sysfs)).toBe(false);
    expect(isTunnelLink('ppp0', sysfs)).toBe(false);
  });

  it('keeps a link whose type it cannot read (gone, or no sysfs): its addresses stay usable', () => {
    expect(isTunnelLink('odd', sysfs)).toBe(false);
    expect(isTunnelLink('gone', sysfs)).toBe(false);
    expect(isTunnelLink('eth0', path.join(sysfs, 'missing'))).toBe(false);
  });
});
