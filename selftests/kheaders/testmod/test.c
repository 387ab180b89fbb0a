// SPDX-License-Identifier: GPL-2.0
/*
 * The module that the kheaders selftest builds against the unpacked archive
 * and loads: it only logs a line on load and one on unload.
 */

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>

static int __init hello_init(void)
{
	pr_info("Hello, world\n");
	return 0;
}

static void __exit hello_exit(void)
{
	pr_info("Goodbye, world\n");
}

module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kheaders selftest: module built from the in-kernel headers archive");
