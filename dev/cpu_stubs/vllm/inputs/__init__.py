from gd2po_cpu_standin import standin_class

TokensPrompt = standin_class("vllm.inputs.TokensPrompt")
