from gd2po_cpu_standin import standin_function

random_uuid = standin_function("vllm.utils.random_uuid")
