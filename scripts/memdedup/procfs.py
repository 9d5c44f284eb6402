"""What the kernel says of a process, for the tests and the bench alike
(scripts/memdedup/ is on both's path)."""


def host_address(pid, size):
    """Start of the only VMA of exactly @size bytes in process @pid: a
    backend's RAM, looked up before registration splits it."""
    found = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            s, e = (int(x, 16) for x in line.split()[0].split("-"))
            if e - s == size:
                found.append(s)
    if len(found) != 1:
        raise AssertionError("%d VMAs of %d bytes" % (len(found), size))
    return found[0]
