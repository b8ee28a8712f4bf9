import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { planTopology } from '../../src/testbed/plan';
import { isUnderlay, nextFreeAddress, parseAddresses, replaceAddress, suspendAgent } from '../../src/testbed/roam';
import { formatCmd, inNs, type RunOptions, type RunResult } from '../../src/testbed/run';
import type { Topology } from '../../src/testbed/topology';
import { longestGapMs, parsePingReplies, recoveryMs } from '../../src/testbed/traffic';

/**
 * The pure half of the roaming tools: reading `ping -D -O` output, timing a recovery, choosing
 * the next address; and the exact commands replaceAddress runs (against a recording topology).
 */

// Recorded on this machine: `ping -n -D -O -W 1 -i 0.01` between two namespaces, with echo
// requests dropped at the target from about .342 to .566 (shortened: seqs 5-14 and 37-42 cut).
const RECORDED = `PING 100.64.210.2 (100.64.210.2) 56(84) bytes of data.
[1795235264.084638] 64 bytes from 100.64.210.2: icmp_seq=1 ttl=64 time=0.029 ms
[1795235264.101997] 64 bytes from 100.64.210.2: icmp_seq=2 ttl=64 time=0.051 ms
[1795235264.118049] 64 bytes from 100.64.210.2: icmp_seq=3 ttl=64 time=0.059 ms
[1795235264.134036] 64 bytes from 100.64.210.2: icmp_seq=4 ttl=64 time=0.058 ms
[1795235264.310072] 64 bytes from 100.64.210.2: icmp_seq=15 ttl=64 time=0.058 ms
[1795235264.326066] 64 bytes from 100.64.210.2: icmp_seq=16 ttl=64 time=0.062 ms
[1795235264.341989] 64 bytes from 100.64.210.2: icmp_seq=17 ttl=64 time=0.047 ms
[1795235264.373938] no answer yet for icmp_seq=18
[1795235264.389936] no answer yet for icmp_seq=19
[1795235264.405935] no answer yet for icmp_seq=20
[1795235264.421933] no answer yet for icmp_seq=21
[1795235264.437921] no answer yet for icmp_seq=22
[1795235264.453943] no answer yet for icmp_seq=23
[1795235264.469927] no answer yet for icmp_seq=24
[1795235264.485912] no answer yet for icmp_seq=25
[1795235264.501940] no answer yet for icmp_seq=26
[1795235264.517948] no answer yet for icmp_seq=27
[1795235264.533902] no answer yet for icmp_seq=28
[1795235264.549908] no answer yet for icmp_seq=29
[1795235264.566003] no answer yet for icmp_seq=30
[1795235264.566114] 64 bytes from 100.64.210.2: icmp_seq=31 ttl=64 time=0.055 ms
[1795235264.582013] 64 bytes from 100.64.210.2: icmp_seq=32 ttl=64 time=0.052 ms
[1795235264.598007] 64 bytes from 100.64.210.2: icmp_seq=33 ttl=64 time=0.061 ms
[1795235264.614016] 64 bytes from 100.64.210.2: icmp_seq=34 ttl=64 time=0.058 ms
[1795235264.634026] 64 bytes from 100.64.210.2: icmp_seq=35 ttl=64 time=0.062 ms
[1795235264.650008] 64 bytes from 100.64.210.2: icmp_seq=36 ttl=64 time=0.051 ms
[1795235264.762014] 64 bytes from 100.64.210.2: icmp_seq=43 ttl=64 time=0.052 ms

--- 100.64.210.2 ping statistics ---
43 packets transmitted, 30 received, 30.2326% packet loss, time 677ms
rtt min/avg/max/mdev = 0.029/0.053/0.062/0.006 ms
`;
const T = 1795235264000; // ms: the recording's whole second

describe('ping series', () => {
  const { replies, sent } = parsePingReplies(RECORDED);

  it('reads every reply with its wall-clock time, sequence and rtt, and the sent count', () => {
    expect(sent).toBe(43);
    expect(replies.map((r) => r.seq)).toEqual([1, 2, 3, 4, 15, 16, 17, 31, 32, 33, 34, 35, 36, 43]);
    expect(replies[0]!.at).toBeCloseTo(T + 84.638, 3);
    expect(replies[7]).toEqual({ seq: 31, at: expect.closeTo(T + 566.114, 3), rttMs: 0.055 });
  });

  it('times the recovery from the change to the first reply to a request sent after it', () => {
    // The outage began at about .342: the reply to seq 17, already under way then, does not count.
    expect(recoveryMs(replies, T + 341.96)).toBeCloseTo(566.114 - 341.96, 3);
    expect(recoveryMs(replies, T + 345)).toBeCloseTo(221.114, 3);
    // Measured from the heal at .560 it is 6 ms.
    expect(recoveryMs(replies, T + 560)).toBeCloseTo(6.114, 3);
    // No reply after the change: not recovered.
    expect(recoveryMs(replies, T + 770)).toBeNull();
    expect(recoveryMs([], T)).toBeNull();
  });

  it('finds the longest gap, counting the stretch to the end of the series', () => {
    expect(longestGapMs(replies, T + 84, T + 762.014)).toBeCloseTo(566.114 - 341.989, 3);
    // A series that never recovered: the gap runs to the stop.
    expect(longestGapMs(replies.slice(0, 7), T + 84, T + 900)).toBeCloseTo(900 - 341.989, 3);
    expect(longestGapMs([], T, T + 500)).toBe(500);
  });

  it('leaves out duplicates, errors and lines without -D timestamps', () => {
    const out = [
      '[1795235264.100000] 64 bytes from 100.64.0.2: icmp_seq=1 ttl=64 time=0.100 ms',
      '[1795235264.100100] 64 bytes from 100.64.0.2: icmp_seq=1 ttl=64 time=0.200 ms (DUP!)',
      '[1795235264.200000] From 100.64.0.1 icmp_seq=2 Destination Host Unreachable',
      '64 bytes from 100.64.0.2: icmp_seq=3 ttl=64 time=0.1 ms',
      '[1795235264.400000] 64 bytes from 100.64.0.2: icmp_seq=4 ttl=64 time=1.5 ms',
      '',
    ].join('\n');
    const p = parsePingReplies(out);
    expect(p.replies.map((r) => [r.seq, r.rttMs])).toEqual([
      [1, 0.1],
      [4, 1.5],
    ]);
    expect(p.sent).toBe(4); // no summary (killed hard): the highest sequence seen
  });
});

describe('addresses', () => {
  it('picks the next free address in the /24, skipping used ones and wrapping before .255', () => {
    expect(nextFreeAddress('198.18.1.2', ['198.18.1.1'])).toBe('198.18.1.3');
    expect(nextFreeAddress('198.19.1.2', ['198.19.1.1', '198.19.1.3', '198.19.1.4'])).toBe('198.19.1.5');
    expect(nextFreeAddress('198.18.1.254', ['198.18.1.1'])).toBe('198.18.1.2');
    const all = Array.from({ length: 253 }, (_, i) => `198.18.1.${i + 2}`);
    expect(() => nextFreeAddress('198.18.1.2', all)).toThrow(/no free address/);
  });

  it('knows the underlay and reads ip addr output', () => {
    expect(isUnderlay('198.18.7.2')).toBe(true);
    expect(isUnderlay('198.19.255.1')).toBe(true);
    expect(isUnderlay('198.20.0.1')).toBe(false);
    expect(isUnderlay('100.64.0.1')).toBe(false);
    expect(() => isUnderlay('198.18.1.300')).toThrow(/not an IPv4/);
    const out =
      '2: cn1-x1    inet 198.18.1.2/24 scope global cn1-x1\\       valid_lft forever preferred_lft forever\n' +
      '2: cn1-x1    inet 198.18.1.3/24 scope global secondary cn1-x1\\       valid_lft forever preferred_lft forever\n';
    expect(parseAddresses(out)).toEqual(['198.18.1.2', '198.18.1.3']);
  });
});

/** A topology whose exec records commands and keeps each device's addresses in a map. */
function recordingTopology(spec: Parameters<typeof planTopology>[0]) {
  const plan = planTopology(spec);
  const addrs = new Map(plan.hosts.map((h) => [h.ns, [h.underlayIp]]));
  const transcript: string[] = [];
  const exec = async (ns: string, cmd: readonly string[], opts?: RunOptions): Promise<RunResult> => {
    transcript.push(formatCmd(inNs(ns, cmd)) + (opts?.input ? ` <<< ${String(opts.input).trim().split('\n').join('; ')}` : ''));
    const mine = addrs.get(ns) ?? [];
    if (cmd.join(' ').startsWith('ip -o -4 addr show')) {
      return { stdout: mine.map((a) => `2: dev    inet ${a}/24 scope global dev\n`).join(''), stderr: '', code: 0 };
    }
    if (cmd[1] === '-batch') {
      for (const line of String(opts?.input).split('\n')) {
        const [, op, cidr] = /^addr (add|del) (\S+)/.exec(line) ?? [];
        if (op === 'add') mine.push(cidr!.split('/')[0]!);
        if (op === 'del') mine.splice(mine.indexOf(cidr!.split('/')[0]!), 1);
      }
    }
    if (cmd.join(' ') === 'ip -4 route show default') {
      const h = plan.hosts.find((x) => x.ns === ns)!;
      return { stdout: `default via ${h.gateway} dev ${h.dev}\n`, stderr: '', code: 0 };
    }
    return { stdout: '', stderr: '', code: 0 };
  };
  const topo = { id: plan.id, plan, exec } as unknown as Topology;
  return { topo, transcript, addrs };
}

describe('replaceAddress', () => {
  it('adds the next free address, deletes the old one and puts the default route back, in one batch', async () => {
    const { topo, transcript } = recordingTopology({
      id: 'cn0010',
      hosts: [{ name: 'a' }, { name: 'b', site: 'o' }, { name: 'c', site: 'o' }],
      sites: [{ name: 'o', nat: 'masquerade' }],
    });
    expect(await replaceAddress(topo, 'a')).toBe('198.18.1.3');
    expect(transcript).toEqual([
      'ip netns exec cn0010-a ip -o -4 addr show dev cn0010-x1',
      'ip netns exec cn0010-a sysctl -q -w net.ipv4.conf.all.promote_secondaries=1',
      'ip netns exec cn0010-a ip -batch - <<< addr add 198.18.1.3/24 dev cn0010-x1; addr del 198.18.1.2/24 dev cn0010-x1; route replace default via 198.18.1.1 dev cn0010-x1',
      'ip netns exec cn0010-a ip -o -4 addr show dev cn0010-x1',
      'ip netns exec cn0010-a ip -4 route show default',
    ]);
    // Behind a site, the other hosts of the LAN are asked which addresses they hold.
    transcript.length = 0;
    expect(await replaceAddress(topo, 'b')).toBe('198.19.1.4');
    expect(transcript[1]).toBe('ip netns exec cn0010-c ip -o -4 addr show dev cn0010-s1h3');
    expect(await replaceAddress(topo, 'b')).toBe('198.19.1.5');
  });

  it('refuses an address off the link, outside the underlay, or in use', async () => {
    const { topo } = recordingTopology({ id: 'cn0011', hosts: 2 });
    await expect(replaceAddress(topo, 'h1', '198.18.2.9')).rejects.toThrow(/not on h1's link/);
    await expect(replaceAddress(topo, 'h1', '10.0.0.9')).rejects.toThrow(/outside 198.18.0.0\/15/);
    await expect(replaceAddress(topo, 'h1', '198.18.1.1')).rejects.toThrow(/in use/);
    await expect(replaceAddress(topo, 'nobody')).rejects.toThrow(/no host named/);
    expect(await replaceAddress(topo, 'h1', '198.18.1.77')).toBe('198.18.1.77');
  });
});

describe('suspendAgent', () => {
  it('stops the process, runs `during`, waits out the time and resumes it', async () => {
    const proc = spawn('sleep', ['30'], { stdio: 'ignore' });
    const state = () => {
      const s = fs.readFileSync(`/proc/${proc.pid}/stat`, 'utf8');
      return s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3);
    };
    try {
      let during = '';
      const r = await suspendAgent({ name: 'sleeper', proc }, 300, async () => {
        during = state();
      });
      expect(during).toBe('T');
      expect(r.resumedAt - r.stoppedAt).toBeGreaterThanOrEqual(300);
      expect(r.resumedAt - r.stoppedAt).toBeLessThan(1_000);
      await new Promise((res) => setTimeout(res, 50));
      expect(state()).toBe('S');
      // A failing `during` still resumes the process.
      await expect(suspendAgent({ name: 'sleeper', proc }, 5_000, () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
      await new Promise((res) => setTimeout(res, 50));
      expect(state()).toBe('S');
    } finally {
      proc.kill('SIGKILL');
    }
  });
});
