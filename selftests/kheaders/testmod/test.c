// SPDX-License-Identifier: GPL-2.0
/*
 * The module that the kheaders selftest builds against the unpacked archive
 * and loads: it logs a line on load and one on unload, and exports one
 * function.
 */

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>

/*
 * Exported, so that every build of this module runs modpost's export
 * handling and, on a CONFIG_MODVERSIONS kernel, genksyms.
 */
int kheaders_selftest_answer(void);

int kheaders_selftest_answer(void)
{
	return 42;
}
EXPORT_SYMBOL_GPL(kheaders_selftest_answer);

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
