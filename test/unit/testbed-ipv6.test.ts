/**
 * The test bed's IPv6 underlay (src/testbed/ipv6.ts): the address twin of each IPv4 address and
 * the exact commands for a small topology, compared as a transcript (nothing runs here).
 */
import { describe, expect, it } from 'vitest';
import { ipv6Of, ipv6PrefixOf, ipv6UnderlayCommands } from '../../src/testbed/ipv6';
import { planTopology } from '../../src/testbed/plan';

describe('test bed IPv6 underlay', () => {
  it('maps each test-bed IPv4 address to its 2001:db8::/32 twin', () => {
    expect(ipv6Of('198.18.0.1')).toBe('2001:db8:1::1');
    expect(ipv6Of('198.18.3.2')).toBe('2001:db8:1:3::2');
    expect(ipv6Of('198.19.1.1')).toBe('2001:db8:2:1::1');
    expect(ipv6PrefixOf('198.19.1.1')).toBe('2001:db8:2:1::/64');
    expect(() => ipv6Of('10.0.0.1')).toThrow(/not a test-bed underlay address/);
  });

  it('builds the twin of a plan: addresses without DAD, forwarding, the sites routed untranslated, v6-only and v4-only hosts', () => {
    const plan = planTopology({ id: 'cnt6', hosts: [{ name: 'a' }, { name: 'b', site: 's' }, { name: 'c' }], sites: [{ name: 's', nat: 'random' }] });
    const cmds = ipv6UnderlayCommands(plan, { v6Only: ['a'], v4Only: ['c'] }).map((c) => c.join(' '));
    expect(cmds).toContain('ip -n cnt6-router -6 addr add 2001:db8:1::1/128 dev lo');
    expect(cmds).toContain('ip netns exec cnt6-router sysctl -q -w net.ipv6.conf.all.forwarding=1');
    expect(cmds).toContain('ip netns exec cnt6-site-s sysctl -q -w net.ipv6.conf.all.forwarding=1');
    // a: internet link 1, IPv6 only
    expect(cmds).toContain('ip -n cnt6-a -6 addr add 2001:db8:1:1::2/64 dev cnt6-x1 nodad');
    expect(cmds).toContain('ip -n cnt6-a -6 route add default via 2001:db8:1:1::1');
    expect(cmds[cmds.length - 1]).toBe('ip -n cnt6-a -4 addr flush dev cnt6-x1');
    // b: behind site s (its LAN 198.19.1.0/24), routed by the router through the site's WAN address
    expect(cmds).toContain('ip -n cnt6-b -6 addr add 2001:db8:2:1::2/64 dev cnt6-s1h2 nodad');
    expect(cmds).toContain('ip -n cnt6-router -6 route add 2001:db8:2:1::/64 via 2001:db8:1:3::2');
    // c: no IPv6 at all (the router's end of its link still gets one)
    expect(cmds.some((c) => c.startsWith('ip -n cnt6-c -6'))).toBe(false);
    expect(cmds).toContain('ip -n cnt6-router -6 addr add 2001:db8:1:2::1/64 dev cnt6-r2 nodad');
    expect(() => ipv6UnderlayCommands(plan, { v6Only: ['zz'] })).toThrow(/no host named "zz"/);
  });
});
