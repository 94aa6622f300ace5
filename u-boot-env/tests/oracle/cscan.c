/*
 * Test oracle: reads lines on stdin and prints how glibc reads each with the conversions
 * libubootenv uses. Mode "fw_env": sscanf(line, "%ms %lli %zx %zx %lx %d"), printed as
 * "ret device offset size sectorsize sectors disable_lock". Mode "strtoull": strtoull(line,
 * NULL, 0), printed as an unsigned decimal.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	int strtoull_mode = argc > 1 && strcmp(argv[1], "strtoull") == 0;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;

	while ((len = getline(&line, &cap, stdin)) != -1) {
		if (len > 0 && line[len - 1] == '\n')
			line[len - 1] = '\0';
		if (strtoull_mode) {
			printf("%llu\n", strtoull(line, NULL, 0));
			continue;
		}
		char *device = NULL;
		long long offset = 0;
		size_t size = 0, sector_size = 0;
		unsigned long sectors = 0;
		int disable_lock = 0;
		int ret = sscanf(line, "%ms %lli %zx %zx %lx %d", &device, &offset, &size,
				 &sector_size, &sectors, &disable_lock);
		printf("%d %s %lld %zu %zu %lu %d\n", ret, device ? device : "-", offset, size,
		       sector_size, sectors, disable_lock);
		free(device);
	}
	free(line);
	return 0;
}
