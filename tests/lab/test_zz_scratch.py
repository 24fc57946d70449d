import pickle


def test_scratch(cell):
    value, err, run = cell('''%%kprobe --target lab --where 'comm == "dd"' -c "sh -c 'taskset -c 1 dd if=/dev/zero of=/dev/null bs=1 count=20000; sleep 15'" ksys_read fd:int''')
    print(err)
    with open("/tmp/ledger_scratch5.pkl", "wb") as f:
        pickle.dump({"df": run.df, "messages": run.messages, "ledger": run.ledger}, f)
