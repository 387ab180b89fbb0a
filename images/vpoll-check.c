// SPDX-License-Identifier: GPL-2.0
/*
 * vpoll-check: exercise Debian's vpoll-dkms driver once dkms has built and
 * loaded it on the device. vpoll synthesizes poll events: the ioctl
 * VPOLL_IO_ADDEVENTS raises events on the file, VPOLL_IO_DELEVENTS clears
 * them, and poll() reports what is raised. The check raises POLLIN and
 * POLLPRI, which poll() must see, then clears them, which it must see too.
 * Prints one line; exits 0 only if every step saw what it raised.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* vpoll.c of vpoll-dkms (0.1.1): the driver has no uapi header. */
#define VPOLL_IOC_MAGIC '^'
#define VPOLL_IO_ADDEVENTS _IO(VPOLL_IOC_MAGIC, 1)
#define VPOLL_IO_DELEVENTS _IO(VPOLL_IOC_MAGIC, 2)

static int polled(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN | POLLPRI };

	if (poll(&p, 1, 0) < 0)
		return -1;
	return p.revents & (POLLIN | POLLPRI);
}

int main(void)
{
	int fd = open("/dev/vpoll", O_RDWR | O_CLOEXEC);
	int before, raised, after;

	if (fd < 0) {
		printf("vpoll-check: cannot open /dev/vpoll: %s\n", strerror(errno));
		return 1;
	}
	before = polled(fd);
	if (ioctl(fd, VPOLL_IO_ADDEVENTS, POLLIN | POLLPRI) < 0) {
		printf("vpoll-check: VPOLL_IO_ADDEVENTS: %s\n", strerror(errno));
		return 1;
	}
	raised = polled(fd);
	if (ioctl(fd, VPOLL_IO_DELEVENTS, POLLIN | POLLPRI) < 0) {
		printf("vpoll-check: VPOLL_IO_DELEVENTS: %s\n", strerror(errno));
		return 1;
	}
	after = polled(fd);
	printf("vpoll-check: poll saw 0x%x before, 0x%x raised (want 0x%x), 0x%x cleared\n",
	       before, raised, POLLIN | POLLPRI, after);
	return !(before == 0 && raised == (POLLIN | POLLPRI) && after == 0);
}
