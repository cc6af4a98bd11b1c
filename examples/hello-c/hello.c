#include <stdio.h>

int main(void) {
	printf("Hello from a confidential build!\n");
	return 0;
}
