import { describe, expect, it } from 'vitest';
import { isCladnetError } from '../../src/errors';
import { planLink, RouteManager, RTPROT_CLADNET, type LinkDesired, type LinkState } from '../../src/os/routes/routes';
import { RecordingRunner, type CommandResult } from '../../src/os/runner';

const DEV = 'cladnet0';
const fresh: LinkState = { exists: true, up: false, mtu: 1500, addresses: [], routes: [] };
const want = (over: Partial<LinkDesired> = {}): LinkDesired => ({
  ifname: DEV,
  mtu: 1420,
  addresses: ['100.64.0.5/24'],
  routes: [],
  ...over,
});

describe('planLink', () => {
  it('uses protocol 77 for its routes', () => {
    expect(RTPROT_CLADNET).toBe(77);
  });

  it('a fresh link: mtu, address, up', () => {
    expect(planLink(fresh, want())).toEqual([
      ['ip', 'link', 'set', 'dev', DEV, 'mtu', '1420'],
      ['ip', 'address', 'add', '100.64.0.5/24', 'dev', DEV],
      ['ip', 'link', 'set', 'dev', DEV, 'up'],
    ]);
  });

  it('nothing when the state already matches (and the match ignores order and /32 spelling)', () => {
    const current: LinkState = {
      exists: true,
      up: true,
      mtu: 1420,
      addresses: ['100.64.0.5/24', '100.64.9.9/32'],
      routes: ['10.2.0.5', '10.20.0.0/16'],
    };
    const desired = want({ addresses: ['100.64.9.9', '100.64.0.5/24'], routes: ['10.20.0.0/16', '10.2.0.5/32'] });
    expect(planLink(current, desired)).toEqual([]);
    expect(planLink(current, desired)).toEqual([]);
  });

  it('an address change adds the new address before deleting the old', () => {
    const current: LinkState = { ...fresh, up: true, mtu: 1420, addresses: ['100.64.0.5/24'] };
    expect(planLink(current, want({ addresses: ['100.64.0.9/24'] }))).toEqual([
      ['ip', 'address', 'add', '100.64.0.9/24', 'dev', DEV],
      ['ip', 'address', 'del', '100.64.0.5/24', 'dev', DEV],
    ]);
  });

  it('a prefix-length change is a new address', () => {
    const current: LinkState = { ...fresh, up: true, mtu: 1420, addresses: ['100.64.0.5/24'] };
    expect(planLink(current, want({ addresses: ['100.64.0.5/16'] }))).toEqual([
      ['ip', 'address', 'add', '100.64.0.5/16', 'dev', DEV],
      ['ip', 'address', 'del', '100.64.0.5/24', 'dev', DEV],
    ]);
  });

  it('adds and removes routes with proto 77, normalising host bits and bare hosts', () => {
    const current: LinkState = { ...fresh, up: true, mtu: 1420, addresses: ['100.64.0.5/24'], routes: ['10.1.0.0/24', '10.2.0.5'] };
    expect(planLink(current, want({ routes: ['10.2.0.5/32', '10.3.7.7/16'] }))).toEqual([
      ['ip', 'route', 'replace', '10.3.0.0/16', 'dev', DEV, 'proto', '77'],
      ['ip', 'route', 'del', '10.1.0.0/24', 'dev', DEV, 'proto', '77'],
    ]);
  });

  it('orders every add before every delete', () => {
    const current: LinkState = {
      exists: true,
      up: false,
      mtu: 9000,
      addresses: ['100.64.0.5/24'],
      routes: ['10.1.0.0/24', '10.9.0.0/16'],
    };
    const cmds = planLink(current, want({ addresses: ['100.64.1.5/24'], routes: ['10.1.0.0/24', '10.4.0.0/24', '10.5.0.0/24'] }));
    expect(cmds.map((c) => c.join(' '))).toEqual([
      `ip link set dev ${DEV} mtu 1420`,
      `ip address add 100.64.1.5/24 dev ${DEV}`,
      `ip link set dev ${DEV} up`,
      `ip route replace 10.4.0.0/24 dev ${DEV} proto 77`,
      `ip route replace 10.5.0.0/24 dev ${DEV} proto 77`,
      `ip route del 10.9.0.0/16 dev ${DEV} proto 77`,
      `ip address del 100.64.0.5/24 dev ${DEV}`,
    ]);
  });

  // `ip -j route` prints a /0 destination as "default", which normalisation does not map to
  // 0.0.0.0/0: the plan then replaces the route and immediately deletes it again. Nothing asks
  // for a /0 route yet (the agent passes routes: []). When routes.ts is fixed, make this `it`.
  it.fails('KNOWN BUG: a kernel "default" route matches a desired 0.0.0.0/0', () => {
    const current: LinkState = { ...fresh, up: true, mtu: 1420, addresses: ['100.64.0.5/24'], routes: ['default'] };
    expect(planLink(current, want({ routes: ['0.0.0.0/0'] }))).toEqual([]);
  });
});

/**
 * A fake kernel behind RecordingRunner: answers `ip -j address show` and `ip -j route show`
 * from its state (in iproute2's JSON shape) and applies the `ip` commands planLink emits.
 */
function fakeKernel(state: { exists: boolean; up: boolean; mtu: number; addrs: string[]; routes: string[]; otherRoutes?: string[] }) {
  const ok = (stdout = ''): CommandResult => ({ code: 0, stdout, stderr: '' });
  return (argv: readonly string[]): CommandResult => {
    const cmd = argv.join(' ');
    if (!state.exists) return { code: 1, stdout: '', stderr: `Device "${DEV}" does not exist.` };
    if (cmd === `ip -j address show dev ${DEV}`) {
      return ok(
        JSON.stringify([
          {
            ifindex: 7,
            ifname: DEV,
            flags: state.up ? ['POINTOPOINT', 'MULTICAST', 'NOARP', 'UP', 'LOWER_UP'] : ['POINTOPOINT', 'MULTICAST', 'NOARP'],
            mtu: state.mtu,
            qdisc: 'fq_codel',
            operstate: state.up ? 'UNKNOWN' : 'DOWN',
            addr_info: [
              ...state.addrs.map((a) => ({ family: 'inet', local: a.split('/')[0], prefixlen: Number(a.split('/')[1]), scope: 'global' })),
              { family: 'inet6', local: 'fe80::1', prefixlen: 64, scope: 'link' },
            ],
          },
        ]),
      );
    }
    if (cmd === `ip -j route show dev ${DEV} proto 77`) {
      return ok(JSON.stringify(state.routes.map((dst) => ({ dst, protocol: '77', scope: 'link', flags: [] }))));
    }
    const [, obj, verb, a1, ...rest] = argv;
    if (obj === 'link' && verb === 'set' && rest[1] === 'mtu') state.mtu = Number(rest[2]);
    else if (obj === 'link' && verb === 'set' && rest[1] === 'up') state.up = true;
    else if (obj === 'address' && verb === 'add') {
      if (state.addrs.includes(a1!)) return { code: 2, stdout: '', stderr: 'RTNETLINK answers: File exists' };
      state.addrs.push(a1!);
    } else if (obj === 'address' && verb === 'del') state.addrs = state.addrs.filter((x) => x !== a1);
    else if (obj === 'route' && verb === 'replace') {
      const dst = a1!.endsWith('/32') ? a1!.slice(0, -3) : a1!; // the kernel prints host routes bare
      if (!state.routes.includes(dst)) state.routes.push(dst);
    } else if (obj === 'route' && verb === 'del') {
      const dst = a1!.endsWith('/32') ? a1!.slice(0, -3) : a1!;
      if (!state.routes.includes(dst)) return { code: 2, stdout: '', stderr: 'RTNETLINK answers: No such process' };
      state.routes = state.routes.filter((x) => x !== dst);
    } else return { code: 255, stdout: '', stderr: `fake kernel: unexpected ${cmd}` };
    return ok();
  };
}

describe('RouteManager.set', () => {
  it('reads, then applies the minimal change; the transcript is exact', async () => {
    const state = { exists: true, up: false, mtu: 1500, addrs: [] as string[], routes: [] as string[] };
    const runner = new RecordingRunner(fakeKernel(state));
    const rm = new RouteManager(runner);
    const ran = await rm.set(want({ routes: ['10.20.0.0/16', '10.2.0.5/32'] }));
    expect(ran).toEqual([
      `ip link set dev ${DEV} mtu 1420`,
      `ip address add 100.64.0.5/24 dev ${DEV}`,
      `ip link set dev ${DEV} up`,
      `ip route replace 10.20.0.0/16 dev ${DEV} proto 77`,
      `ip route replace 10.2.0.5/32 dev ${DEV} proto 77`,
    ]);
    expect(runner.transcript).toEqual([`ip -j address show dev ${DEV}`, `ip -j route show dev ${DEV} proto 77`, ...ran]);
    expect(state).toEqual({ exists: true, up: true, mtu: 1420, addrs: ['100.64.0.5/24'], routes: ['10.20.0.0/16', '10.2.0.5'] });
  });

  it('is idempotent: a second set with the same desired state only reads', async () => {
    const state = { exists: true, up: false, mtu: 1500, addrs: [] as string[], routes: [] as string[] };
    const runner = new RecordingRunner(fakeKernel(state));
    const rm = new RouteManager(runner);
    const desired = want({ routes: ['10.20.0.0/16', '10.2.0.5/32'] });
    await rm.set(desired);
    runner.transcript.length = 0;
    expect(await rm.set(desired)).toEqual([]);
    expect(runner.transcript).toEqual([`ip -j address show dev ${DEV}`, `ip -j route show dev ${DEV} proto 77`]);
  });

  it('moves to a new address and route set with adds before deletes', async () => {
    const state = { exists: true, up: true, mtu: 1420, addrs: ['100.64.0.5/24'], routes: ['10.20.0.0/16', '10.2.0.5'] };
    const runner = new RecordingRunner(fakeKernel(state));
    const ran = await new RouteManager(runner).set(want({ addresses: ['100.64.0.6/24'], routes: ['10.2.0.5/32', '10.30.0.0/16'] }));
    expect(ran).toEqual([
      `ip address add 100.64.0.6/24 dev ${DEV}`,
      `ip route replace 10.30.0.0/16 dev ${DEV} proto 77`,
      `ip route del 10.20.0.0/16 dev ${DEV} proto 77`,
      `ip address del 100.64.0.5/24 dev ${DEV}`,
    ]);
    expect(state.addrs).toEqual(['100.64.0.6/24']);
    expect(state.routes).toEqual(['10.2.0.5', '10.30.0.0/16']);
  });

  it('a missing link reads as empty (no route query) and is configured from scratch', async () => {
    const runner = new RecordingRunner((argv) =>
      argv[1] === '-j' ? { code: 1, stdout: '', stderr: 'Device "cladnet0" does not exist.' } : { code: 0, stdout: '', stderr: '' },
    );
    const rm = new RouteManager(runner);
    expect(await rm.read(DEV)).toEqual({ exists: false, up: false, mtu: 0, addresses: [], routes: [] });
    runner.transcript.length = 0;
    await rm.set(want());
    expect(runner.transcript).toEqual([
      `ip -j address show dev ${DEV}`,
      `ip link set dev ${DEV} mtu 1420`,
      `ip address add 100.64.0.5/24 dev ${DEV}`,
      `ip link set dev ${DEV} up`,
    ]);
  });

  it('stops at the first failing command with an EOS error naming it and its stderr', async () => {
    const state = { exists: true, up: false, mtu: 1500, addrs: [] as string[], routes: [] as string[] };
    const kernel = fakeKernel(state);
    const runner = new RecordingRunner((argv) =>
      argv[1] === 'address' && argv[2] === 'add' ? { code: 2, stdout: '', stderr: 'RTNETLINK answers: Permission denied\n' } : kernel(argv),
    );
    const err = await new RouteManager(runner).set(want()).catch((e: unknown) => e);
    expect(isCladnetError(err, 'EOS')).toBe(true);
    expect((err as Error).message).toBe(`ip address add 100.64.0.5/24 dev ${DEV} failed (exit 2): RTNETLINK answers: Permission denied`);
    expect(runner.transcript.at(-1)).toBe(`ip address add 100.64.0.5/24 dev ${DEV}`);
    expect(runner.transcript).not.toContain(`ip link set dev ${DEV} up`);
  });

  it('reads only IPv4 addresses and the UP flag', async () => {
    const state = { exists: true, up: true, mtu: 1280, addrs: ['100.64.0.5/24', '100.64.1.1/32'], routes: ['10.9.0.0/16'] };
    const rm = new RouteManager(new RecordingRunner(fakeKernel(state)));
    expect(await rm.read(DEV)).toEqual({
      exists: true,
      up: true,
      mtu: 1280,
      addresses: ['100.64.0.5/24', '100.64.1.1/32'],
      routes: ['10.9.0.0/16'],
    });
  });
});
