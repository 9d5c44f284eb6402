#include "trace/trace-hw_mem_memdedup.h"
