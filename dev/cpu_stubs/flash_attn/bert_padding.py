from gd2po_cpu_standin import standin_function

index_first_axis = standin_function("flash_attn.bert_padding.index_first_axis")
pad_input = standin_function("flash_attn.bert_padding.pad_input")
rearrange = standin_function("flash_attn.bert_padding.rearrange")
unpad_input = standin_function("flash_attn.bert_padding.unpad_input")
